/*
 * pushd browser client, served by pushd at /pushd.js.
 *
 *   <script src="http://HOST:8000/pushd.js"></script>
 *   const push = new Pushd("ws://HOST:8000/ws", {key: "CLIENT_KEY"});
 *   const news = push.subscribe("news");
 *   news.bind("headline", (data, message) => console.log(data));
 *   news.bindAll((event, data) => ...);   // every event on the channel
 *   push.on("state", (state) => ...);     // connecting, connected, disconnected, failed
 *   push.on("error", (frame) => ...);     // error frames from the server
 *
 * Reconnects with capped, jittered exponential backoff and subscribes again;
 * close codes 4000-4099 mean "do not retry" (e.g. 4001, wrong client key)
 * and end in state "failed".  Wire protocol: docs/protocol.md.
 */
(function (root) {
  "use strict";

  function Channel(client, name) {
    this.client = client;
    this.name = name;
    this.handlers = {};
    this.catchAll = [];
    this.subscribed = false;
  }
  Channel.prototype.bind = function (event, fn) {
    (this.handlers[event] = this.handlers[event] || []).push(fn);
    return this;
  };
  Channel.prototype.bindAll = function (fn) {
    this.catchAll.push(fn);
    return this;
  };
  Channel.prototype._dispatch = function (frame) {
    (this.handlers[frame.event] || []).forEach(function (fn) { fn(frame.data, frame); });
    this.catchAll.forEach(function (fn) { fn(frame.event, frame.data, frame); });
  };

  function Pushd(url, options) {
    options = options || {};
    this.url = url + (options.key ? (url.indexOf("?") < 0 ? "?" : "&") +
      "key=" + encodeURIComponent(options.key) : "");
    this.channels = {};
    this.listeners = {};
    this.state = "initialized";
    this.connectionId = null;
    this._attempt = 0;
    this._maxDelay = options.maxReconnectDelay || 30000;
    this._closedByUser = false;
    var self = this;
    // Connect on the next tick, so listeners added right after the
    // constructor see every state change, "connecting" included.
    setTimeout(function () { self._connect(); }, 0);
  }

  Pushd.prototype.on = function (name, fn) {
    (this.listeners[name] = this.listeners[name] || []).push(fn);
    return this;
  };
  Pushd.prototype._emit = function (name) {
    var args = Array.prototype.slice.call(arguments, 1);
    (this.listeners[name] || []).forEach(function (fn) { fn.apply(null, args); });
  };
  Pushd.prototype._setState = function (state) {
    this.state = state;
    this._emit("state", state);
  };

  Pushd.prototype._connect = function () {
    var self = this;
    this._setState("connecting");
    var ws = this.ws = new WebSocket(this.url);
    ws.onmessage = function (event) {
      var frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      self._receive(frame);
    };
    ws.onclose = function (event) {
      self.connectionId = null;
      Object.keys(self.channels).forEach(function (n) { self.channels[n].subscribed = false; });
      self._emit("close", event.code, event.reason);
      if (self._closedByUser) { self._setState("disconnected"); return; }
      if (event.code >= 4000 && event.code < 4100) { self._setState("failed"); return; }
      self._setState("disconnected");
      var delay = Math.min(self._maxDelay, 500 * Math.pow(2, self._attempt++));
      setTimeout(function () { self._connect(); }, delay / 2 + Math.random() * delay / 2);
    };
  };

  Pushd.prototype._receive = function (frame) {
    var channel = frame.channel && this.channels[frame.channel];
    switch (frame.type) {
      case "connected":
        this.connectionId = frame.connection_id;
        this._attempt = 0;
        this._setState("connected");
        for (var name in this.channels) { this._send({type: "subscribe", channel: name}); }
        break;
      case "subscribed":
        if (channel) { channel.subscribed = true; }
        this._emit("subscribed", frame.channel);
        break;
      case "message":
        if (channel) { channel._dispatch(frame); }
        this._emit("message", frame);
        break;
      case "error":
        this._emit("error", frame);
        break;
      default:
        this._emit(frame.type, frame);
    }
  };

  Pushd.prototype._send = function (frame) {
    if (this.ws && this.ws.readyState === 1) { this.ws.send(JSON.stringify(frame)); }
  };

  Pushd.prototype.subscribe = function (name) {
    if (!this.channels[name]) {
      this.channels[name] = new Channel(this, name);
      if (this.state === "connected") { this._send({type: "subscribe", channel: name}); }
    }
    return this.channels[name];
  };

  Pushd.prototype.unsubscribe = function (name) {
    if (this.channels[name]) {
      delete this.channels[name];
      this._send({type: "unsubscribe", channel: name});
    }
  };

  Pushd.prototype.close = function () {
    this._closedByUser = true;
    if (this.ws) { this.ws.close(1000); }
  };

  if (typeof module !== "undefined" && module.exports) { module.exports = Pushd; }
  else { root.Pushd = Pushd; }
})(this);
