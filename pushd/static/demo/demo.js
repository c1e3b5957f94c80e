/*
 * The chat demo, built only on pushd.js (docs/demo.md):
 *   presence-demo-room          who is online; typing indicators (client events)
 *   private-demo-chat           chat lines (client events), kept: history on join
 *   peer-demo-room:<a>&<b>      private messages between two users, kept
 * The page asks pushd's demo token endpoint for a user token; a real app's
 * backend would mint it for its logged-in user instead.
 * ?name=Ann joins at once; ?transports=sse,longpoll picks transports.
 */
(function () {
  "use strict";
  const ROOM = "presence-demo-room";
  const CHAT = "private-demo-chat";
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const demo = window.demo = {push: null, me: null, to: null, seen: new Set(), typing: {}, lastTyping: 0};

  function nameOf(userId) {
    const room = demo.push && demo.push.channel(ROOM);
    const info = room && room.members[userId];
    return (info && info.name) || userId;
  }

  function addLine(who, text, kind) {
    const li = document.createElement("li");
    if (kind) { li.className = kind; }
    if (who) {
      const b = document.createElement("span");
      b.className = "who";
      b.textContent = who;
      li.appendChild(b);
    }
    li.appendChild(document.createTextNode(text));
    $("log").appendChild(li);
    $("log").scrollTop = $("log").scrollHeight;
  }

  function peerChannel(a, b) {
    return "peer-demo-room:" + [a, b].sort().join("&");
  }

  function showMessage(data, priv) {
    if (!data || typeof data.text !== "string" || demo.seen.has(data.mid)) { return; }
    demo.seen.add(data.mid);
    clearTyping(data.from);
    addLine(data.name + (priv && data.to ? " \u2192 " + data.toName : ""), data.text, priv ? "private" : "");
  }

  function renderMembers() {
    const room = demo.push.channel(ROOM);
    const list = $("members");
    list.textContent = "";
    Object.keys(room.members).sort().forEach((userId) => {
      const li = document.createElement("li");
      li.textContent = nameOf(userId) + (userId === demo.me ? " (you)" : "");
      li.dataset.user = userId;
      if (userId === demo.me) { li.className = "me"; }
      else { li.onclick = () => talkTo(userId); }
      list.appendChild(li);
      if (userId !== demo.me) { openPeer(userId); }
    });
  }

  function openPeer(userId) {
    const name = peerChannel(demo.me, userId);
    if (demo.push.channel(name)) { return; }
    demo.push.subscribe(name, {since: {offset: 0}}).bind("client-dm", (data) => showMessage(data, true));
  }

  function talkTo(userId) {
    demo.to = userId;
    $("to").hidden = !userId;
    $("to-name").textContent = userId ? nameOf(userId) : "";
    $("text").focus();
  }

  function renderTyping() {
    const names = Object.keys(demo.typing).map(nameOf);
    $("typing").textContent = names.length ? names.join(", ") + (names.length > 1 ? " are" : " is") + " typing\u2026" : "";
  }
  function clearTyping(userId) {
    if (demo.typing[userId]) { clearTimeout(demo.typing[userId]); delete demo.typing[userId]; renderTyping(); }
  }

  function start(key, token, userId, name) {
    demo.me = userId;
    demo.name = name;
    const options = {key: key, token: token, authEndpoint: "auth"};
    if (params.get("transports")) { options.transports = params.get("transports").split(","); }
    const push = demo.push = new Pushd(location.origin + location.pathname.replace(/\/demo\/.*$/, ""), options);
    push.on("state", (state) => {
      $("status").textContent = state + (push.transport ? " \u00b7 " + push.transport : "");
      $("status").className = "status " + state;
    });
    const room = push.subscribe(ROOM);
    room.bind("pushd:subscription_succeeded", renderMembers);
    room.bind("pushd:member_added", (m) => { renderMembers(); addLine("", (m.user_info || {}).name + " joined", "system"); });
    room.bind("pushd:member_removed", (m) => {
      addLine("", ((m.user_info || {}).name || m.user_id) + " left", "system");
      clearTyping(m.user_id);
      renderMembers();
    });
    room.bind("client-typing", (data, frame) => {
      clearTyping(frame.user_id);
      demo.typing[frame.user_id] = setTimeout(() => clearTyping(frame.user_id), 3000);
      renderTyping();
    });
    const chat = push.subscribe(CHAT, {since: {offset: 0}});
    chat.bind("client-message", (data) => showMessage(data, false));
    chat.bind("pushd:recovered", (r) => { if (!r.recovered) { addLine("", "some messages could not be recovered", "system"); } });
    $("join").hidden = true;
    $("room").hidden = false;
    $("text").focus();
  }

  $("join").onsubmit = (event) => {
    event.preventDefault();
    const name = $("name").value.trim();
    fetch("token", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({name: name})})
      .then((r) => r.json())
      .then((answer) => start(answer.key, answer.token, answer.user_id, name));
  };

  $("text").oninput = () => {
    const now = Date.now();
    if (now - demo.lastTyping > 2000 && $("text").value) {
      demo.lastTyping = now;
      demo.push.channel(ROOM).trigger("client-typing", {});
    }
  };

  $("say").onsubmit = (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text) { return; }
    const data = {mid: Math.random().toString(36).slice(2), from: demo.me, name: demo.name, text: text};
    let sent;
    if (demo.to) {
      data.to = demo.to;
      data.toName = nameOf(demo.to);
      sent = demo.push.channel(peerChannel(demo.me, demo.to)).trigger("client-dm", data);
    } else {
      sent = demo.push.channel(CHAT).trigger("client-message", data);
    }
    if (!sent) { addLine("", "not sent: sending needs a WebSocket connection", "system"); return; }
    demo.lastTyping = 0;
    $("text").value = "";
    showMessage(data, !!demo.to);
  };
  $("to-room").onclick = () => talkTo(null);

  if (params.get("name")) {
    $("name").value = params.get("name");
    $("join").requestSubmit();
  }
})();
