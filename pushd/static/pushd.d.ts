// Types for pushd.js, served beside it at /pushd.d.ts.  Reference: docs/client-js.md.

export type State = "initialized" | "connecting" | "connected" | "disconnected" | "failed";
export type TransportName = "websocket" | "sse" | "longpoll";

/** A channel's place in its history: what `since` carries on resubscribe. */
export interface Position {
  offset: number;
  epoch?: string;
}

export interface PushdOptions {
  /** The app's client key (omit for a single-app server without one). */
  key?: string;
  /** A user token minted by the app's backend. */
  token?: string;
  /** Where to POST {connection_id, channel} for private-/presence- signatures. */
  authEndpoint?: string;
  authHeaders?: Record<string, string>;
  /** Transports to try, in order (default: all three). */
  transports?: TransportName[];
  /** Upper bound of the reconnect backoff, in ms (default 30000). */
  maxReconnectDelay?: number;
  /** Give up on a connection attempt after this many ms (default 10000). */
  connectTimeout?: number;
}

export interface SubscribeOptions {
  /** Ask for what is kept after this position; {offset: 0} for all of it. */
  since?: Position;
}

/** A message as every transport hands it over. */
export interface MessageFrame {
  type: "message";
  channel: string;
  event: string;
  data: unknown;
  id?: string;
  offset?: number;
  epoch?: string;
  user_id?: string;
}

export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
  orig?: string;
  channel?: string;
}

export interface Member {
  user_id: string;
  user_info?: unknown;
}

export interface LossNotice {
  type: "messages_lost";
  channel: string;
  reason: string;
}

export declare class Channel {
  readonly name: string;
  readonly subscribed: boolean;
  /** Presence channels: user_id -> user_info. */
  readonly members: Record<string, unknown>;
  /** The last position seen, sent as `since` after a reconnect. */
  readonly position: Position | null;

  bind(event: "pushd:subscription_succeeded", fn: (members: Record<string, unknown>) => void): this;
  bind(event: "pushd:subscription_error", fn: (error: ErrorFrame) => void): this;
  bind(event: "pushd:member_added" | "pushd:member_removed", fn: (member: Member) => void): this;
  bind(event: "pushd:recovered", fn: (result: {recovered: boolean}) => void): this;
  bind(event: "pushd:messages_lost", fn: (notice: LossNotice) => void): this;
  bind(event: "pushd:channel_deleted", fn: (frame: {type: "channel_deleted"; channel: string}) => void): this;
  bind(event: string, fn: (data: any, message: MessageFrame) => void): this;
  unbind(event: string, fn?: (...args: any[]) => void): this;
  bindAll(fn: (event: string, data: any, message: MessageFrame) => void): this;
  /** A client event (name starts with "client-"); false if the transport cannot send. */
  trigger(event: string, data?: unknown): boolean;
}

export default class Pushd {
  constructor(url: string, options?: PushdOptions);
  readonly state: State;
  readonly transport: TransportName | null;
  readonly connectionId: string | null;
  readonly userId: string | null;
  readonly channels: Record<string, Channel>;

  on(event: "state", fn: (state: State) => void): this;
  on(event: "transport", fn: (transport: TransportName) => void): this;
  on(event: "connected", fn: (frame: {connection_id?: string; user_id?: string}) => void): this;
  on(event: "close", fn: (code: number, reason: string) => void): this;
  on(event: "subscribed" | "channel_deleted", fn: (channel: string) => void): this;
  on(event: "message", fn: (message: MessageFrame) => void): this;
  on(event: "error", fn: (error: ErrorFrame) => void): this;
  on(event: "recovered", fn: (channel: string, recovered: boolean) => void): this;
  on(event: "messages_lost", fn: (channel: string, notice: LossNotice) => void): this;
  on(event: "offline" | "online", fn: () => void): this;
  on(event: string, fn: (...args: any[]) => void): this;
  off(event: string, fn?: (...args: any[]) => void): this;

  subscribe(channel: string, options?: SubscribeOptions): Channel;
  unsubscribe(channel: string): void;
  channel(name: string): Channel | null;
  /** Close for good (state "disconnected"); connect() opens again. */
  close(): void;
  connect(): void;

  static Channel: typeof Channel;
  static transports: TransportName[];
}

declare global {
  interface Window {
    Pushd: typeof Pushd;
  }
}
