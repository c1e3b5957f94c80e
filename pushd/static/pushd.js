/*
 * pushd browser client, served by pushd at /pushd.js.  One file, no
 * dependencies, ES2017.  API reference: docs/client-js.md; types: pushd.d.ts.
 *
 *   <script src="http://HOST:8000/pushd.js"></script>
 *   const push = new Pushd("ws://HOST:8000/ws", {key: "CLIENT_KEY"});
 *   const news = push.subscribe("news");
 *   news.bind("headline", (data, message) => console.log(data));
 *   news.bind("pushd:recovered", ({recovered}) => recovered || reload());
 *   push.on("state", (state) => ...);     // connecting, connected, disconnected, failed
 *
 * Never misses a message: every channel remembers the position of the last
 * message it got and subscribes again with `since` after a reconnect; pushd
 * replays what was missed, or says it cannot (`pushd:recovered` with
 * recovered false, and `pushd:messages_lost` when the server lost some).
 *
 * Transports, in order: WebSocket, Server-Sent Events (when WebSocket cannot
 * connect: proxy, refused upgrade), long-polling through the HTTP relay
 * (when EventSource is missing too; public channels only).  The first one
 * that connects is kept for the life of the client.  Reconnects use capped,
 * jittered exponential backoff; close codes 4000-4099 mean "do not retry"
 * and end in state "failed".  Going offline closes at once and coming back
 * online (or the page becoming visible) reconnects without waiting.
 */
(function (root) {
  "use strict";

  var TRANSPORTS = ["websocket", "sse", "longpoll"];
  // pushd's own frames, as SSE event names are "pushd:" + type.
  var SSE_FRAMES = ["connected", "subscribed", "unsubscribed", "error", "member_added",
                    "member_removed", "messages_lost", "channel_deleted", "close"];

  function needsAuth(name) {
    return name.indexOf("private-") === 0 || name.indexOf("presence-") === 0;
  }
  function isPublic(name) {
    return !/^(private-|presence-|personal-|peer-)/.test(name);
  }
  function randomId() {
    var chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    var out = "";
    for (var i = 0; i < 22; i++) { out += chars.charAt(Math.floor(Math.random() * chars.length)); }
    return out;
  }
  function query(params) {
    return params.map(function (p) {
      return encodeURIComponent(p[0]) + "=" + encodeURIComponent(p[1]);
    }).join("&");
  }

  // -- channels -------------------------------------------------------------

  function Channel(client, name, options) {
    this.client = client;
    this.name = name;
    this.handlers = {};
    this.catchAll = [];
    this.subscribed = false;
    this.members = {};
    // Last position seen ({offset, epoch}); sent as `since` on resubscribe.
    this.position = (options && options.since) || null;
    this._relay = null;  // long-polling: {modified, etag} of the last answer
    this._ids = [];      // ids of the last messages without a position
  }
  Channel.prototype.bind = function (event, fn) {
    (this.handlers[event] = this.handlers[event] || []).push(fn);
    this.client._eventNamed(event);
    return this;
  };
  Channel.prototype.unbind = function (event, fn) {
    var list = this.handlers[event] || [];
    this.handlers[event] = fn ? list.filter(function (f) { return f !== fn; }) : [];
    return this;
  };
  Channel.prototype.bindAll = function (fn) {
    this.catchAll.push(fn);
    return this;
  };
  /** Sends a client event; false when the transport cannot (SSE, long-polling). */
  Channel.prototype.trigger = function (event, data) {
    return this.client._send({type: "client_event", channel: this.name, event: event, data: data});
  };
  Channel.prototype._emit = function (event, data) {
    (this.handlers[event] || []).forEach(function (fn) { fn(data); });
  };
  Channel.prototype._dispatch = function (frame) {
    var position = this.position;
    if (typeof frame.offset === "number") {
      if (position && position.epoch === frame.epoch && frame.offset <= position.offset) { return false; }
      this.position = {offset: frame.offset, epoch: frame.epoch};
    } else if (frame.id) {
      // Without a position, the id tells a duplicate (two SSE streams overlap).
      if (this._ids.indexOf(frame.id) >= 0) { return false; }
      this._ids.push(frame.id);
      if (this._ids.length > 64) { this._ids.shift(); }
    }
    (this.handlers[frame.event] || []).forEach(function (fn) { fn(frame.data, frame); });
    this.catchAll.forEach(function (fn) { fn(frame.event, frame.data, frame); });
    return true;
  };

  // -- the client -----------------------------------------------------------

  function Pushd(url, options) {
    options = options || {};
    var base = url.replace(/^ws(s?):/, "http$1:").replace(/\/ws\/?(\?.*)?$/, "").replace(/\/$/, "");
    this.baseUrl = base;
    this.wsUrl = base.replace(/^http(s?):/, "ws$1:") + "/ws";
    this.key = options.key || null;
    this.token = options.token || null;
    this.authEndpoint = options.authEndpoint || null;
    this.authHeaders = options.authHeaders || {};
    this.transports = (options.transports || TRANSPORTS).filter(function (t) {
      return TRANSPORTS.indexOf(t) >= 0;
    });
    this.connectTimeout = options.connectTimeout || 10000;
    this.channels = {};
    this.listeners = {};
    this.state = "initialized";
    this.transport = null;
    this.connectionId = null;
    this.userId = null;
    this._proven = null;    // the transport that has connected once: kept for good
    this._choice = 0;       // index into this.transports while none is proven
    this._attempt = 0;
    this._maxDelay = options.maxReconnectDelay || 30000;
    this._closedByUser = false;
    this._timer = null;
    this._conn = null;
    this._eventNames = {message: true};
    var self = this;
    if (typeof window !== "undefined" && window.addEventListener) {
      window.addEventListener("offline", function () { self._offline(); });
      window.addEventListener("online", function () { self._wake("online"); });
    }
    if (typeof document !== "undefined" && document.addEventListener) {
      document.addEventListener("visibilitychange", function () {
        if (document.visibilityState === "visible") { self._wake("visible"); }
      });
    }
    // Connect on the next tick, so listeners added right after the
    // constructor see every state change, "connecting" included.
    this._schedule(0);
  }

  Pushd.prototype.on = function (name, fn) {
    (this.listeners[name] = this.listeners[name] || []).push(fn);
    return this;
  };
  Pushd.prototype.off = function (name, fn) {
    var list = this.listeners[name] || [];
    this.listeners[name] = fn ? list.filter(function (f) { return f !== fn; }) : [];
    return this;
  };
  Pushd.prototype._emit = function (name) {
    var args = Array.prototype.slice.call(arguments, 1);
    (this.listeners[name] || []).forEach(function (fn) { fn.apply(null, args); });
  };
  Pushd.prototype._setState = function (state) {
    if (this.state === state) { return; }
    this.state = state;
    this._emit("state", state);
  };
  Pushd.prototype._eventNamed = function (event) {
    if (!this._eventNames[event]) {
      this._eventNames[event] = true;
      if (this._conn && this._conn.listen) { this._conn.listen(event); }
    }
  };

  Pushd.prototype._schedule = function (delay) {
    var self = this;
    clearTimeout(this._timer);
    this._timer = setTimeout(function () { self._timer = null; self._connect(); }, delay);
  };

  Pushd.prototype._available = function (name) {
    if (name === "websocket") { return typeof WebSocket !== "undefined"; }
    if (name === "sse") { return typeof EventSource !== "undefined"; }
    return typeof fetch !== "undefined";
  };

  Pushd.prototype._connect = function () {
    if (this._closedByUser || this._conn) { return; }
    var name = this._proven;
    while (!name) {
      if (this._choice >= this.transports.length) { this._choice = 0; }
      var candidate = this.transports[this._choice];
      if (this._available(candidate)) { name = candidate; break; }
      this._choice++;
      if (this._choice >= this.transports.length && !this.transports.some(this._available)) {
        this._setState("failed");
        return;
      }
    }
    this._setState("connecting");
    if (this.transport !== name) {
      this.transport = name;
      this._emit("transport", name);
    }
    var Transport = {websocket: WebSocketTransport, sse: SSETransport, longpoll: LongPollTransport}[name];
    var conn = this._conn = new Transport(this);
    var self = this;
    conn.timer = setTimeout(function () {
      if (self._conn === conn && self.state !== "connected") { conn.abort(); }
    }, this.connectTimeout);
    conn.open();
  };

  /** Called by a transport when it is gone; decides what comes next. */
  Pushd.prototype._closed = function (conn, code, reason) {
    if (this._conn !== conn) { return; }
    clearTimeout(conn.timer);
    clearTimeout(this._pingTimer);
    this._conn = null;
    var wasConnected = conn.connected;
    this.connectionId = null;
    for (var n in this.channels) { this.channels[n].subscribed = false; }
    this._emit("close", code, reason);
    if (this._closedByUser) { this._setState("disconnected"); return; }
    if (code >= 4000 && code < 4100) { this._setState("failed"); return; }
    this._setState("disconnected");
    if (this._offlineNow) { return; }  // "online" reconnects
    if (!wasConnected && !this._proven) {
      // Never got through: try the next transport at once, then back off.
      this._choice++;
      if (this._choice < this.transports.length) { this._schedule(0); return; }
    }
    var delay = Math.min(this._maxDelay, 500 * Math.pow(2, this._attempt++));
    this._schedule(delay / 2 + Math.random() * delay / 2);
  };

  Pushd.prototype._opened = function (conn, frame) {
    conn.connected = true;
    clearTimeout(conn.timer);
    this._proven = conn.name;
    this._attempt = 0;
    this.connectionId = frame.connection_id || null;
    this.userId = frame.user_id || null;
    this._setState("connected");
    this._emit("connected", frame);
  };

  Pushd.prototype._offline = function () {
    this._offlineNow = true;
    this._emit("offline");
    clearTimeout(this._timer);
    if (this._conn) { this._conn.abort(); }
  };

  /** Back online, or the page is visible again: reconnect now, or check a
   * WebSocket that may have died while the machine slept. */
  Pushd.prototype._wake = function (why) {
    if (why === "online") { this._offlineNow = false; this._emit("online"); }
    if (this._closedByUser || this._offlineNow || this.state === "failed") { return; }
    if (this._conn) {
      if (this._conn.connected && this._conn.name === "websocket") { this._checkAlive(); }
      return;
    }
    this._attempt = 0;
    this._schedule(0);
  };

  Pushd.prototype._checkAlive = function () {
    var self = this, conn = this._conn, ref = randomId();
    this._pingRef = ref;
    clearTimeout(this._pingTimer);
    this._pingTimer = setTimeout(function () {
      if (self._conn === conn && self._pingRef === ref) { conn.abort(); }
    }, 5000);
    this._send({type: "ping", ref: ref});
  };

  Pushd.prototype._receive = function (frame) {
    var channel = frame.channel && this.channels[frame.channel];
    switch (frame.type) {
      case "connected":
        this._opened(this._conn, frame);
        if (this._conn && this._conn.subscribeAll) { this._conn.subscribeAll(); }
        break;
      case "subscribed":
        if (channel) {
          channel.subscribed = true;
          if (frame.members) {
            channel.members = {};
            frame.members.forEach(function (m) { channel.members[m.user_id] = m.user_info; });
          }
          if (typeof frame.offset === "number" && (!channel.position || frame.recovered === false)) {
            channel.position = {offset: frame.offset, epoch: frame.epoch};
          }
          channel._emit("pushd:subscription_succeeded", channel.members);
          if (typeof frame.recovered === "boolean") {
            channel._emit("pushd:recovered", {recovered: frame.recovered});
            this._emit("recovered", frame.channel, frame.recovered);
          }
        }
        this._emit("subscribed", frame.channel);
        break;
      case "member_added":
        if (channel) {
          channel.members[frame.user_id] = frame.user_info;
          channel._emit("pushd:member_added", {user_id: frame.user_id, user_info: frame.user_info});
        }
        break;
      case "member_removed":
        if (channel) {
          var info = channel.members[frame.user_id];
          delete channel.members[frame.user_id];
          channel._emit("pushd:member_removed", {user_id: frame.user_id, user_info: info});
        }
        break;
      case "message":
        if (channel && !channel._dispatch(frame)) { break; }  // a duplicate
        this._emit("message", frame);
        break;
      case "messages_lost":
        if (channel) { channel._emit("pushd:messages_lost", frame); }
        this._emit("messages_lost", frame.channel, frame);
        break;
      case "channel_deleted":
        if (channel) { channel.position = null; channel._emit("pushd:channel_deleted", frame); }
        this._emit("channel_deleted", frame.channel);
        break;
      case "pong":
        if (frame.ref === this._pingRef) { this._pingRef = null; clearTimeout(this._pingTimer); }
        break;
      case "close":  // SSE: the server says why it ends the stream
        if (this._conn) { this._conn.abort(frame.code, frame.reason); }
        break;
      case "error":
        if (channel && frame.orig === "subscribe") {
          channel._emit("pushd:subscription_error", frame);
        }
        this._emit("error", frame);
        break;
      default:
        this._emit(frame.type, frame);
    }
  };

  Pushd.prototype._send = function (frame) {
    return !!(this._conn && this._conn.connected && this._conn.send && this._conn.send(frame));
  };

  Pushd.prototype._subscriptionError = function (name, code, message) {
    var channel = this.channels[name];
    var error = {type: "error", code: code, message: message, channel: name, orig: "subscribe"};
    if (channel) { channel._emit("pushd:subscription_error", error); }
    this._emit("error", error);
  };

  /** {auth, channel_data?} from the app's auth endpoint, or null when the
   * channel needs none. */
  Pushd.prototype._authorize = function (name, connectionId) {
    if (!needsAuth(name) || !this.authEndpoint) { return Promise.resolve(null); }
    var headers = {"Content-Type": "application/json"};
    for (var h in this.authHeaders) { headers[h] = this.authHeaders[h]; }
    return fetch(this.authEndpoint, {
      method: "POST", headers: headers, credentials: "include",
      body: JSON.stringify({connection_id: connectionId, channel: name})
    }).then(function (r) {
      if (!r.ok) { throw new Error("auth endpoint answered " + r.status); }
      return r.json();
    });
  };

  /** Subscribe to `name`; options.since ({offset, epoch}, or {offset: 0}
   * for everything kept) asks for history on the first subscribe too. */
  Pushd.prototype.subscribe = function (name, options) {
    if (!this.channels[name]) {
      this.channels[name] = new Channel(this, name, options);
      if (this._conn && (this._conn.connected || this._conn.idle)) { this._conn.subscribe(name); }
    }
    return this.channels[name];
  };

  Pushd.prototype.unsubscribe = function (name) {
    if (this.channels[name]) {
      delete this.channels[name];
      if (this._conn && this._conn.connected) { this._conn.unsubscribe(name); }
    }
  };

  Pushd.prototype.channel = function (name) {
    return this.channels[name] || null;
  };

  Pushd.prototype.close = function () {
    this._closedByUser = true;
    clearTimeout(this._timer);
    if (this._conn) { this._conn.abort(1000, "closed by the app"); }
  };

  /** Reopen after close(), or retry now after "failed". */
  Pushd.prototype.connect = function () {
    this._closedByUser = false;
    this._attempt = 0;
    if (!this._conn) { this._schedule(0); }
  };

  // -- WebSocket ------------------------------------------------------------

  function WebSocketTransport(client) {
    this.client = client;
    this.name = "websocket";
    this.connected = false;
  }
  WebSocketTransport.prototype.open = function () {
    var client = this.client, self = this;
    var params = [];
    if (client.key) { params.push(["key", client.key]); }
    if (client.token) { params.push(["token", client.token]); }
    var ws = this.ws = new WebSocket(client.wsUrl + (params.length ? "?" + query(params) : ""));
    ws.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (client._conn === self) { client._receive(frame); }
    };
    ws.onclose = function (event) { client._closed(self, event.code, event.reason); };
  };
  WebSocketTransport.prototype.send = function (frame) {
    if (this.ws.readyState !== 1) { return false; }
    this.ws.send(JSON.stringify(frame));
    return true;
  };
  // Subscribe frames go out in the order the app subscribed (a peer- channel
  // needs its presence- channel first), once every signature is in.
  WebSocketTransport.prototype.subscribeAll = function () {
    var self = this;
    Promise.all(Object.keys(this.client.channels).map(function (name) {
      return self._frame(name);
    })).then(function (frames) {
      frames.forEach(function (frame) { if (frame) { self.send(frame); } });
    });
  };
  WebSocketTransport.prototype.subscribe = function (name) {
    var self = this;
    this._frame(name).then(function (frame) { if (frame) { self.send(frame); } });
  };
  /** The subscribe frame for `name` (null if it is no longer wanted). */
  WebSocketTransport.prototype._frame = function (name) {
    var client = this.client, self = this, connectionId = client.connectionId;
    return client._authorize(name, connectionId).then(function (answer) {
      var channel = client.channels[name];
      if (client._conn !== self || client.connectionId !== connectionId || !channel) { return null; }
      var frame = {type: "subscribe", channel: name};
      if (answer) {
        frame.auth = answer.auth;
        if (answer.channel_data) { frame.channel_data = answer.channel_data; }
      }
      if (channel.position) { frame.since = channel.position; }
      return frame;
    }, function (e) {
      client._subscriptionError(name, "auth_failed", String(e));
      return null;
    });
  };
  WebSocketTransport.prototype.unsubscribe = function (name) {
    this.send({type: "unsubscribe", channel: name});
  };
  WebSocketTransport.prototype.abort = function (code, reason) {
    var ws = this.ws;
    ws.onclose = ws.onmessage = null;
    if (ws.readyState <= 1) { try { ws.close(1000); } catch (e) { /* closing anyway */ } }
    this.client._closed(this, code || 1006, reason || "");
  };

  // -- Server-Sent Events ---------------------------------------------------
  //
  // The stream's channels are fixed when it opens, so a subscribe or an
  // unsubscribe opens a new stream carrying every position.  The old one
  // keeps delivering messages (duplicates are dropped by position or id)
  // until the new one has answered every subscribe, then closes: nothing
  // is missed, and presence does not flap.

  function SSETransport(client) {
    this.client = client;
    this.name = "sse";
    this.connected = false;
    this.es = null;
    this.old = null;
    this._reopen = null;
  }
  SSETransport.prototype.open = function () {
    var client = this.client, self = this;
    var names = Object.keys(client.channels);
    if (!names.length) {
      // pushd needs a channel: the stream opens on the next subscribe.
      [this.es, this.old].forEach(function (es) { if (es) { es.close(); } });
      this.es = this.old = null;
      this.idle = true;
      clearTimeout(this.timer);
      return;
    }
    this.idle = false;
    // The server issues the stream's id; channels that need the app's
    // signature are added once it is known, by POST /sse/frames (the
    // signature never goes in a URL).
    var params = [], positions = [], count = 0;
    this.signed = [];
    if (client.key) { params.push(["key", client.key]); }
    if (client.token) { params.push(["token", client.token]); }
    names.forEach(function (name) {
      var channel = client.channels[name];
      if (!channel) { return; }
      count++;
      if (needsAuth(name)) { self.signed.push(name); } else { params.push(["channel", name]); }
      if (channel.position) {
        positions.push([name, channel.position.offset + "." + (channel.position.epoch || "")]);
      }
    });
    if (!count) { this.idle = true; return; }
    if (positions.length) { params.push(["lastEventId", query(positions)]); }
    this._start(client.baseUrl + "/sse?" + query(params), count);
  };
  SSETransport.prototype._subscribeSigned = function (hello) {
    var client = this.client, self = this;
    this.signed.forEach(function (name) {
      client._authorize(name, hello.connection_id).then(function (answer) {
        var channel = client.channels[name];
        if (client._conn !== self || !channel) { return null; }
        var frame = {type: "subscribe", channel: name, auth: answer && answer.auth};
        if (answer && answer.channel_data) { frame.channel_data = answer.channel_data; }
        if (channel.position) {
          frame.since = {offset: channel.position.offset, epoch: channel.position.epoch || ""};
        }
        return fetch(client.baseUrl + "/sse/frames", {
          method: "POST", headers: {"Content-Type": "application/json"},
          body: JSON.stringify({key: client.key, connection_id: hello.connection_id,
                                stream_secret: hello.stream_secret, frame: frame})
        }).then(function (r) {
          if (!r.ok) { throw new Error("/sse/frames answered " + r.status); }
        });
      }).then(null, function (e) {
        self._settled();
        client._subscriptionError(name, "auth_failed", String(e));
      });
    });
  };
  SSETransport.prototype._settled = function () {
    if (--this.pending === 0 && this.old) { this.old.close(); this.old = null; }
  };
  SSETransport.prototype._start = function (url, pending) {
    var client = this.client, self = this;
    this.pending = pending;
    if (this.old) { this.old.close(); }
    this.old = this.es;
    var es = this.es = new EventSource(url);
    this._handler = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      var from = event.target;
      if (client._conn !== self || (from !== self.es && from !== self.old)) { return; }
      if (from === self.old) {
        if (frame.type === "message") { client._receive(frame); }
        return;
      }
      if (frame.type === "connected") { self._subscribeSigned(frame); }
      if (frame.type === "connected" && self.connected) {
        client.connectionId = frame.connection_id;  // a reopened stream
        return;
      }
      if (frame.type === "subscribed" || (frame.type === "error" && frame.orig === "subscribe")) {
        self._settled();
      }
      client._receive(frame);
    };
    SSE_FRAMES.forEach(function (type) { es.addEventListener("pushd:" + type, self._handler); });
    Object.keys(client._eventNames).forEach(function (name) { self.listen(name); });
    es.onerror = function () {
      es.close();
      if (self.es !== es) { return; }
      // Reconnects are ours (backoff, positions, transport choice), not the browser's.
      client._closed(self, 1006, "event stream failed");
    };
  };
  SSETransport.prototype.listen = function (event) {
    var self = this;
    if (event.indexOf("pushd:") === 0) { return; }
    [this.es, this.old].forEach(function (es) { if (es) { es.addEventListener(event, self._handler); } });
  };
  SSETransport.prototype._restart = function () {
    var self = this;
    clearTimeout(this._reopen);
    this._reopen = setTimeout(function () {
      if (self.client._conn === self) { self.open(); }
    }, 0);
  };
  SSETransport.prototype.subscribe = function () { this._restart(); };
  SSETransport.prototype.unsubscribe = function () { this._restart(); };
  SSETransport.prototype.subscribeAll = function () {};
  SSETransport.prototype.abort = function (code, reason) {
    clearTimeout(this._reopen);
    [this.es, this.old].forEach(function (es) { if (es) { es.close(); } });
    this.es = this.old = null;
    this.client._closed(this, code || 1006, reason || "");
  };
  // No send: client events need a WebSocket.

  // -- Long-polling through the HTTP relay ----------------------------------

  function LongPollTransport(client) {
    this.client = client;
    this.name = "longpoll";
    this.connected = false;
    this.polls = {};
  }
  LongPollTransport.prototype.open = function () {
    var client = this.client, self = this;
    this.aborter = typeof AbortController !== "undefined" ? new AbortController() : null;
    fetch(client.baseUrl + "/health", {cache: "no-store", signal: this._signal()}).then(function (r) {
      if (!r.ok) { throw new Error("health answered " + r.status); }
      if (client._conn !== self) { return; }
      // Start each channel at the server's "now" (its clock, not ours).
      self.now = r.headers.get("Date") || new Date().toUTCString();
      client._opened(self, {});
      self.subscribeAll();
    }).catch(function () {
      if (client._conn === self) { self.abort(); }
    });
  };
  LongPollTransport.prototype._signal = function () {
    return this.aborter ? this.aborter.signal : undefined;
  };
  LongPollTransport.prototype.subscribeAll = function () {
    for (var name in this.client.channels) { this.subscribe(name); }
  };
  LongPollTransport.prototype.subscribe = function (name) {
    var client = this.client, channel = client.channels[name];
    if (!channel || this.polls[name]) { return; }
    if (!isPublic(name)) {
      client._subscriptionError(name, "unsupported", "long-polling serves public channels only");
      return;
    }
    if (!channel._relay) { channel._relay = {modified: this.now, etag: "0"}; }
    this.polls[name] = true;
    channel.subscribed = true;
    channel._emit("pushd:subscription_succeeded", channel.members);
    client._emit("subscribed", name);
    this._poll(name);
  };
  LongPollTransport.prototype.unsubscribe = function (name) {
    delete this.polls[name];
  };
  LongPollTransport.prototype._poll = function (name) {
    var client = this.client, self = this;
    var channel = client.channels[name];
    if (client._conn !== this || !this.polls[name] || !channel) { return; }
    var url = client.baseUrl + "/subscriber/" + encodeURIComponent(name);
    var params = [];  // the relay identifies subscribers like /ws and /sse do
    if (client.key) { params.push(["key", client.key]); }
    if (client.token) { params.push(["token", client.token]); }
    if (params.length) { url += "?" + query(params); }
    fetch(url, {cache: "no-store", signal: this._signal(), headers: {
      "If-Modified-Since": channel._relay.modified, "If-None-Match": channel._relay.etag
    }}).then(function (r) {
      if (r.status === 200) {
        return r.text().then(function (body) { self._deliver(name, r, body); return true; });
      }
      if (r.status === 304) { return true; }
      if (r.status === 409) {  // the node may have missed messages; ask again
        return r.json().then(null, function () { return {}; }).then(function (body) {
          client._receive({type: "messages_lost", channel: name, reason: body.message || ""});
          return true;
        });
      }
      if (r.status === 410) {
        client._receive({type: "channel_deleted", channel: name});
        channel._relay = {modified: new Date().toUTCString(), etag: "0"};
        return true;
      }
      delete self.polls[name];
      client._subscriptionError(name, "forbidden", "relay answered " + r.status);
      return false;
    }).then(function (again) {
      if (again) { self._poll(name); }
    }).catch(function () {
      if (client._conn === self) { self.abort(); }
    });
  };
  LongPollTransport.prototype._deliver = function (name, response, body) {
    var channel = this.client.channels[name];
    if (!channel || this.client._conn !== this) { return; }
    channel._relay = {modified: response.headers.get("Last-Modified"),
                      etag: response.headers.get("Etag") || "0"};
    var data = body;
    if ((response.headers.get("Content-Type") || "").indexOf("json") >= 0) {
      try { data = JSON.parse(body); } catch (e) { /* keep the text */ }
    }
    var event = response.headers.get("X-Pushd-Event");
    this.client._receive({type: "message", channel: name,
                          event: event ? decodeURIComponent(event) : "message",
                          data: data, id: response.headers.get("X-Pushd-Id") || undefined});
  };
  LongPollTransport.prototype.abort = function (code, reason) {
    this.polls = {};
    if (this.aborter) { this.aborter.abort(); }
    this.client._closed(this, code || 1006, reason || "");
  };
  // No send: client events need a WebSocket.

  Pushd.Channel = Channel;
  Pushd.transports = TRANSPORTS.slice();
  if (typeof module !== "undefined" && module.exports) { module.exports = Pushd; }
  else { root.Pushd = Pushd; }
})(this);
