// Drives the real pusher-js (Node build) and Laravel Echo for pushd's tests.
// Commands arrive as JSON lines on stdin; everything the clients see goes out
// as JSON lines on stdout (tests/pusherjs.py reads them).
import readline from "node:readline";
import Pusher from "pusher-js";
import Echo from "laravel-echo";

const clients = {};
const echoes = {};
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

function connect(id, key, options) {
  const pusher = new Pusher(key, options);
  clients[id] = pusher;
  watch(id, pusher);
  return pusher;
}

function watch(id, pusher) {
  pusher.connection.bind("state_change", (s) =>
    out({ id, state: s.current, socket_id: pusher.connection.socket_id || null })
  );
  pusher.connection.bind("error", (e) =>
    // Errors on the open connection carry data; refusals at the handshake
    // wrap it ({type: "WebSocketError", error: {type: "PusherError", data}}).
    out({ id, conn_error: (e && (e.data || (e.error && e.error.data))) || null })
  );
}

function subscribe(id, channel) {
  const ch = clients[id].subscribe(channel);
  ch.bind_global((event, data, meta) => {
    const line = { id, channel, event, data };
    if (event === "pusher:subscription_succeeded" && ch.members) {
      line.me = ch.members.me;
      line.count = ch.members.count;
    }
    if (meta && meta.user_id) line.user_id = meta.user_id;
    out(line);
  });
}

const ops = {
  connect: (c) => connect(c.id, c.key, c.options),
  subscribe: (c) => subscribe(c.id, c.channel),
  // bind_global callbacks get no metadata; a bound event does (user_id).
  bind: (c) =>
    clients[c.id]
      .channel(c.channel)
      .bind(c.event, (data, meta) => out({ id: c.id, bound: c.event, data, meta })),
  unsubscribe: (c) => clients[c.id].unsubscribe(c.channel),
  trigger: (c) =>
    out({ id: c.id, triggered: clients[c.id].channel(c.channel).trigger(c.event, c.data) }),
  signin: (c) => {
    const pusher = clients[c.id];
    pusher.user.bind_global((event, data) => out({ id: c.id, user_event: event, data }));
    pusher.signin();
    pusher.user.signinDonePromise.then(() =>
      out({ id: c.id, signed_in: pusher.user.user_data })
    );
  },
  disconnect: (c) => clients[c.id].disconnect(),
  echo: (c) => {
    const echo = new Echo(Object.assign({ broadcaster: "pusher", Pusher }, c.options));
    echoes[c.id] = echo;
    clients[c.id] = echo.connector.pusher;
    watch(c.id, echo.connector.pusher);
  },
  echo_listen: (c) =>
    echoes[c.id]
      .channel(c.channel)
      .subscribed(() => out({ id: c.id, echo: "subscribed", channel: c.channel }))
      .listen(c.event, (e) => out({ id: c.id, echo: "event", channel: c.channel, data: e })),
  echo_join: (c) =>
    echoes[c.id]
      .join(c.channel)
      .here((users) => out({ id: c.id, echo: "here", users }))
      .joining((user) => out({ id: c.id, echo: "joining", user }))
      .leaving((user) => out({ id: c.id, echo: "leaving", user }))
      .listenForWhisper("typing", (e) => out({ id: c.id, echo: "whisper", data: e })),
  echo_whisper: (c) => echoes[c.id].join(c.channel).whisper("typing", c.data),
};

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  try {
    ops[command.op](command);
  } catch (e) {
    out({ id: command.id, exception: String(e) });
  }
});
