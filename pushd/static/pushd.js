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
 * Users, private and presence channels (docs/protocol.md):
 *
 *   new Pushd(url, {key, token,            // token: minted by your backend
 *                   authEndpoint: "/pushd/auth", authHeaders: {...}});
 *   const room = push.subscribe("presence-room");
 *   room.bind("pushd:subscription_succeeded", (members) => ...);  // {user_id: info}
 *   room.bind("pushd:member_added", (member) => ...);
 *   room.bind("pushd:member_removed", (member) => ...);
 *   room.bind("pushd:subscription_error", (error) => ...);
 *   room.trigger("client-typing", {on: true});  // when the app allows client events
 *
 * For private- and presence- channels the client POSTs
 * {"connection_id", "channel"} as JSON to authEndpoint and sends the
 * {"auth", "channel_data"} it answers along with the subscribe.
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
    this.members = {};
  }
  Channel.prototype.trigger = function (event, data) {
    this.client._send({type: "client_event", channel: this.name, event: event, data: data});
  };
  Channel.prototype._emit = function (event, data) {
    (this.handlers[event] || []).forEach(function (fn) { fn(data); });
  };
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
    var query = [];
    if (options.key) { query.push("key=" + encodeURIComponent(options.key)); }
    if (options.token) { query.push("token=" + encodeURIComponent(options.token)); }
    this.url = url + (query.length ? (url.indexOf("?") < 0 ? "?" : "&") + query.join("&") : "");
    this.authEndpoint = options.authEndpoint || null;
    this.authHeaders = options.authHeaders || {};
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
        this.userId = frame.user_id || null;
        for (var name in this.channels) { this._subscribe(name); }
        break;
      case "subscribed":
        if (channel) {
          channel.subscribed = true;
          if (frame.members) {
            channel.members = {};
            frame.members.forEach(function (m) { channel.members[m.user_id] = m.user_info; });
          }
          channel._emit("pushd:subscription_succeeded", channel.members);
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
          delete channel.members[frame.user_id];
          channel._emit("pushd:member_removed", {user_id: frame.user_id});
        }
        break;
      case "message":
        if (channel) { channel._dispatch(frame); }
        this._emit("message", frame);
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
    if (this.ws && this.ws.readyState === 1) { this.ws.send(JSON.stringify(frame)); }
  };

  Pushd.prototype.subscribe = function (name) {
    if (!this.channels[name]) {
      this.channels[name] = new Channel(this, name);
      if (this.state === "connected") { this._subscribe(name); }
    }
    return this.channels[name];
  };

  Pushd.prototype._subscribe = function (name) {
    var self = this;
    var needsAuth = name.indexOf("private-") === 0 || name.indexOf("presence-") === 0;
    if (!needsAuth || !this.authEndpoint) {
      this._send({type: "subscribe", channel: name});
      return;
    }
    var connectionId = this.connectionId;
    var headers = {"Content-Type": "application/json"};
    for (var h in this.authHeaders) { headers[h] = this.authHeaders[h]; }
    fetch(this.authEndpoint, {method: "POST", headers: headers, credentials: "include",
                              body: JSON.stringify({connection_id: connectionId, channel: name})})
      .then(function (r) {
        if (!r.ok) { throw new Error("auth endpoint answered " + r.status); }
        return r.json();
      })
      .then(function (answer) {
        if (self.connectionId !== connectionId || !self.channels[name]) { return; }
        var frame = {type: "subscribe", channel: name, auth: answer.auth};
        if (answer.channel_data) { frame.channel_data = answer.channel_data; }
        self._send(frame);
      })
      .catch(function (e) {
        var channel = self.channels[name];
        var error = {type: "error", code: "auth_failed", message: String(e), channel: name};
        if (channel) { channel._emit("pushd:subscription_error", error); }
        self._emit("error", error);
      });
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
