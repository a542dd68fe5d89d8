// A Socket.IO v4 client for one namespace, over WebSocket only: what the console needs and no
// more (the official client is 50 KB and would be the page's only third-party code). It
// speaks Engine.IO 4 (open "0", ping "2" / pong "3", message "4") and Socket.IO 5 packets
// (connect "0", disconnect "1", event "2", connect error "4"), and reconnects by itself with
// a growing delay, except after a refusal or a server-side disconnect, which a retry would
// only repeat.

const MAX_DELAY_MS = 5000;

/**
 * Connect to `nsp` with handshake `auth`.
 * on.state(s): "connecting" | "live" | "reconnecting" | "offline";
 * on.event(name, data); on.refused(message): the handshake was refused for good.
 */
export function connect(nsp, auth, on) {
  let ws = null;
  let stopped = false;
  let delay = 500;
  let everLive = false;
  let watchdog = null;
  let silence = 45000;

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/socket.io/?EIO=4&transport=websocket`;

  function open() {
    on.state(everLive ? "reconnecting" : "connecting");
    ws = new WebSocket(url);
    ws.onmessage = (m) => receive(String(m.data));
    ws.onclose = () => {
      clearTimeout(watchdog);
      if (stopped) return;
      on.state("reconnecting");
      setTimeout(open, delay);
      delay = Math.min(delay * 2, MAX_DELAY_MS);
    };
  }

  // The server pings every pingInterval; silence past pingInterval + pingTimeout is a dead link.
  function arm() {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => ws && ws.close(), silence);
  }

  function receive(frame) {
    switch (frame[0]) {
      case "0": {
        const o = JSON.parse(frame.slice(1));
        silence = o.pingInterval + o.pingTimeout;
        arm();
        ws.send(`40${nsp},${JSON.stringify(auth)}`);
        break;
      }
      case "2":
        ws.send("3");
        arm();
        break;
      case "4":
        packet(frame.slice(1));
        break;
      case "1":
        ws.close();
        break;
    }
  }

  function packet(p) {
    const type = p[0];
    let rest = p.slice(1);
    if (rest.startsWith(`${nsp},`)) rest = rest.slice(nsp.length + 1);
    else if (nsp !== "/") return; // another namespace's packet: not ours
    rest = rest.replace(/^\d+/, ""); // an ack id, which the console never answers
    if (type === "0") {
      delay = 500;
      everLive = true;
      on.state("live");
    } else if (type === "2") {
      const [name, data] = JSON.parse(rest);
      on.event(name, data);
    } else if (type === "4") {
      const message = (JSON.parse(rest || "{}").message || "refused").toString();
      // "unavailable" passes (a replica starting, Redis failing over): try again.
      if (message.startsWith("unavailable")) {
        ws.close();
        return;
      }
      stopped = true;
      ws.close();
      on.state("offline");
      on.refused(message);
    } else if (type === "1") {
      stopped = true;
      ws.close();
      on.state("offline");
    }
  }

  open();
  return {
    close() {
      stopped = true;
      if (ws) ws.close();
      on.state("offline");
    },
  };
}
