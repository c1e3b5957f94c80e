// Subscribes through EventSource (the WHATWG implementation in the
// `eventsource` package), prints each event as a JSON line, and lets the
// library do what browsers do: reconnect and send Last-Event-ID.
const EventSource = require("eventsource");
const source = new EventSource(process.argv[2]);
const out = (o) => console.log(JSON.stringify(o));
source.addEventListener("pushd:subscribed", (e) => out({subscribed: JSON.parse(e.data)}));
source.addEventListener("tick", (e) => {
  const frame = JSON.parse(e.data);
  out({data: frame.data, lastEventId: e.lastEventId});
  if (frame.data === "last") source.close();
});
source.onerror = () => out({error: source.readyState});
