// Socket.IO v4 over Engine.IO v4 framing, for k6/ws. Pure JavaScript with no imports, so the
// same file is used by every k6 scenario and unit-tested with Node (e2e/tests/k6.test.mjs).
//
// Engine.IO: "0{open}" from the server, "2" ping / "3" pong, "4<socket.io packet>" message.
// Socket.IO on namespace "/": "0{auth}" connect, "0{sid}" connected, "4{err}" connect_error,
// "2[event,...]" event, "2<id>[event,...]" event asking for an ack, "3<id>[...]" ack.

export function wsUrl(base) {
  return `${base.replace(/^http/, "ws").replace(/\/$/, "")}/socket.io/?EIO=4&transport=websocket`;
}

export const connectFrame = (auth) => `40${JSON.stringify(auth)}`;

export function eventFrame(event, data, ackId) {
  const args = data === undefined ? [event] : [event, data];
  return `42${ackId === undefined ? "" : ackId}${JSON.stringify(args)}`;
}

/** Decode one WebSocket text frame. */
export function decode(frame) {
  if (frame === "2") return { type: "ping" };
  if (frame === "3") return { type: "pong" };
  if (frame[0] === "0") return { type: "open", data: JSON.parse(frame.slice(1)) };
  if (frame[0] === "1") return { type: "close" };
  if (frame[0] !== "4") return { type: "unknown", frame };
  const p = frame.slice(1);
  if (p.startsWith("0")) return { type: "connected", data: p.length > 1 ? JSON.parse(p.slice(1)) : null };
  if (p.startsWith("4")) return { type: "connect_error", data: JSON.parse(p.slice(1)) };
  if (p.startsWith("1")) return { type: "disconnect" };
  const m = /^([23])(\d*)(\[.*)$/s.exec(p);
  if (!m) return { type: "unknown", frame };
  const args = JSON.parse(m[3]);
  if (m[1] === "3") return { type: "ack", id: Number(m[2]), data: args[0] };
  return { type: "event", id: m[2] === "" ? undefined : Number(m[2]), event: args[0], data: args[1] };
}

/**
 * Wrap a k6/ws socket (or anything with send/on) as a Socket.IO client on "/".
 * Handlers: onConnect(), onError(msg), onEvent(name, data). Answers pings itself.
 */
export function client(socket, auth, { onConnect, onError, onEvent } = {}) {
  let nextAck = 1;
  const waiting = {};
  socket.on("message", (frame) => {
    const m = decode(frame);
    switch (m.type) {
      case "ping": socket.send("3"); break;
      case "open": socket.send(connectFrame(auth)); break;
      case "connected": onConnect && onConnect(m.data); break;
      case "connect_error": onError && onError(m.data && m.data.message); break;
      case "ack": if (waiting[m.id]) { waiting[m.id](m.data); delete waiting[m.id]; } break;
      case "event": onEvent && onEvent(m.event, m.data); break;
      default: break;
    }
  });
  return {
    emit(event, data) { socket.send(eventFrame(event, data)); },
    emitWithAck(event, data, cb) { const id = nextAck++; waiting[id] = cb; socket.send(eventFrame(event, data, id)); },
    pendingAcks() { return Object.keys(waiting).length; },
  };
}
