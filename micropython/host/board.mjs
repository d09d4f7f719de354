// Runs the MicroPython subset as a board would, under the official MicroPython WebAssembly
// port (npm @micropython/micropython-webassembly-pyscript, MicroPython 1.27) in Node.
//
// The port has no socket module, but Python can await JavaScript promises, so this shim hands
// it byte streams from Node: TCP (node:net) for MQTT, and an inherited file descriptor (a pty
// master) for the serial transport. micropython/host/hostio.py wraps them into the stream
// interface the library uses on a board (asyncio.open_connection's reader/writer).
//
// Usage:
//   node micropython/host/board.mjs --main main.py [--site site_config.py] [--lib DIR]
//        [--mpy DIR] [--serial-fd N] [--heap BYTES [--fixed-heap 1]] [--exec CODE]
//   --main    the board's main.py (run as the board runs it, after hostio.install())
//   --site    copied to site_config.py beside main.py (Wi-Fi and broker settings)
//   --lib     folder holding the edgemcp package as .py (default: ../ next to this file)
//   --mpy     folder holding edgemcp as .mpy files (mpy-cross output) instead of --lib
//   --serial-fd  an inherited fd (pty master): the board's serial line, hostio.serial()
//   --heap    MicroPython heap in bytes (default 1 MiB; the port grows it when needed)
//   --fixed-heap 1  keep the heap at --heap bytes, as on a board: a full heap is collected,
//             then MemoryError (the port's heap grows from malloc: the WebAssembly memory
//             may no longer grow, and what malloc has left is cut into 2 KB holes, enough
//             for the port's own small buffers, never for a new heap area)
//   --exec    Python code to run instead of a main file (the memory benchmark)
//   --world   a JSON file describing the board's surroundings, read at every use: the access
//             point ("wlan"), the DNS table ("dns"), NTP reachable ("ntp"), a cold RTC
//             ("clock": "cold"); with it the test doubles network.py, socket.py, ssl.py,
//             ntptime.py and rtc.py (the clock) are installed (ESP32 firmware has them built in)
//   --put     SRC=DEST[,SRC=DEST...]: files copied onto the board's filesystem (a CA file)
//   --esp32 1 TCP streams behave as the ESP32 port's (hostio.Stream): reads return 1..66
//             bytes at a time, and a refused connection opens and fails on the first
//             write or read (ECONNRESET), as lwIP reports it; the socket stays counted
//             until the board closes it; a TLS stream's read returns None now and then
//             (mbedTLS's WANT_READ: a record not complete yet). On by default with --world.
// Stop with SIGTERM/SIGINT: the Device is stopped cleanly first (presence cleared).
import fs from "node:fs";
import net from "node:net";
import tls from "node:tls";
import tty from "node:tty";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript/micropython.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const out = { lib: path.resolve(here, ".."), heap: 1 << 20 };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, "");
    out[key.replace(/-(.)/g, (_, c) => c.toUpperCase())] = argv[++i];
  }
  return out;
}

const openSockets = new Set();

// A byte stream over a Node duplex (socket or tty): read(n) / readline() resolve with a
// Uint8Array (empty at end of stream), write(u8) queues, drain() waits for the kernel.
class ByteStream {
  constructor(sock, out = sock) {
    this.sock = out;
    // TCP sockets the board holds (host.sockets_open()): as with lwIP on an ESP32, a socket the
    // peer closed stays allocated until the board closes it itself
    if (sock instanceof net.Socket) openSockets.add(this);  // tls.TLSSocket too
    this.buf = Buffer.alloc(0);
    this.eof = false;
    this.waiter = null;
    sock.on("data", (d) => { this.buf = Buffer.concat([this.buf, d]); this.wake(); });
    const end = () => { this.eof = true; this.wake(); };
    sock.on("end", end);
    sock.on("close", end);
    sock.on("error", (e) => { this.error = String(e.message || e); end(); });
  }
  wake() { const w = this.waiter; this.waiter = null; if (w) w(); }
  async wait(ready) {
    while (!ready() && !this.eof) await new Promise((r) => { this.waiter = r; });
  }
  take(n) {
    const out = new Uint8Array(this.buf.subarray(0, n));
    this.buf = this.buf.subarray(n);
    return out;
  }
  async read(n) {
    await this.wait(() => this.buf.length > 0);
    return this.take(Math.min(n, this.buf.length));
  }
  async readline() {
    await this.wait(() => this.buf.indexOf(10) >= 0);
    const i = this.buf.indexOf(10);
    return this.take(i >= 0 ? i + 1 : this.buf.length);
  }
  write(u8) {
    if (!this.sock.destroyed) this.sock.write(Buffer.from(u8));
  }
  drain() {
    if (this.sock.destroyed || !this.sock.writableNeedDrain) return Promise.resolve(0);
    return new Promise((r) => { this.sock.once("drain", () => r(0)); this.sock.once("close", () => r(0)); });
  }
  close() { openSockets.delete(this); this.sock.destroy(); }
}

const host = {
  // TCP sockets the board has opened and not yet closed: lwIP on an ESP32 has only a handful.
  sockets_open() { return openSockets.size; },
  // A TCP stream counted from the start of its connect (a board holds its lwIP socket from
  // socket() on, connected or not): its .ready resolves once connected, rejects on a failure.
  tcp_open(hostname, port) {
    const sock = net.createConnection({ host: hostname, port, noDelay: true });
    const s = new ByteStream(sock);
    s.ready = new Promise((resolve, reject) => {
      const fail = (e) => reject(new Error(`${hostname}:${port}: ${e.code || e.message}`));
      sock.once("connect", () => { sock.removeListener("error", fail); resolve(0); });
      sock.once("error", fail);
    });
    s.ready.catch(() => {});
    return s;
  },
  // TLS (MicroPython's ssl over mbedTLS on a board; Node's TLS here): the server is verified
  // against caPem and servername when verifyMode is CERT_REQUIRED (2), as mbedTLS does
  tls_open(hostname, port, servername, caPem, verifyMode) {
    const opts = { host: hostname, port, servername, rejectUnauthorized: Number(verifyMode) === 2 };
    if (caPem) opts.ca = caPem;
    const sock = tls.connect(opts);
    sock.setNoDelay(true);
    const s = new ByteStream(sock);
    s.ready = new Promise((resolve, reject) => {
      const fail = (e) => reject(new Error(`TLS ${servername} (${hostname}:${port}): ${e.code || e.message}`));
      sock.once("secureConnect", () => {
        sock.removeListener("error", fail);
        // the server certificate's validity against the board's clock (Unix s), as mbedTLS
        // checks it: -1 not yet valid, 1 expired, 0 valid (compared here: 3000-01-01 in seconds
        // does not fit a 32-bit small int)
        const c = sock.getPeerCertificate();
        s.validity = (t) => (t * 1000 < Date.parse(c.valid_from) ? -1 : t * 1000 > Date.parse(c.valid_to) ? 1 : 0);
        resolve(0);
      });
      sock.once("error", fail);
    });
    s.ready.catch(() => {});
    return s;
  },
  now() { return Date.now() / 1000; },
  esp32: false,  // set from --esp32 below
  world() { return args.world ? fs.readFileSync(args.world, "utf8") || "{}" : "{}"; },
  fd_open(fd) {
    // a pty master is a TTY for libuv: one read and one write handle on the same fd
    return new ByteStream(new tty.ReadStream(Number(fd)), new tty.WriteStream(Number(fd)));
  },
};

function copyTree(mp, from, to, exts) {
  mp.FS.mkdirTree(to);
  for (const name of fs.readdirSync(from)) {
    const src = path.join(from, name);
    if (fs.statSync(src).isDirectory()) {
      if (name !== "__pycache__" && name !== "node_modules") copyTree(mp, src, `${to}/${name}`, exts);
    } else if (exts.some((e) => name.endsWith(e))) {
      mp.FS.writeFile(`${to}/${name}`, fs.readFileSync(src));
    }
  }
}

const args = parseArgs(process.argv.slice(2));
host.esp32 = Boolean(Number(args.esp32 !== undefined ? args.esp32 : args.world ? 1 : 0));  // on with --world
host.serial_fd = args.serialFd !== undefined ? Number(args.serialFd) : -1;
const mp = await loadMicroPython({
  heapsize: Number(args.heap),
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});
mp.registerJsModule("host", host);
if (args.fixedHeap) {
  WebAssembly.Memory.prototype.grow = () => { throw new RangeError("fixed heap"); };
  const held = [];
  for (let p; (p = mp._module._malloc(2048));) held.push(p);
  for (let i = 0; i < held.length; i += 2) mp._module._free(held[i]);
}
if (args.mpy) copyTree(mp, path.resolve(args.mpy, "edgemcp"), "/lib/edgemcp", [".mpy"]);
else copyTree(mp, path.resolve(args.lib, "edgemcp"), "/lib/edgemcp", [".py"]);
const shims = args.world ? ["hostworld.py", "network.py", "socket.py", "ssl.py", "ntptime.py", "rtc.py", "esp32.py"] : [];
for (const name of ["hostio.py", "machine.py", ...shims]) mp.FS.writeFile(`/lib/${name}`, fs.readFileSync(path.join(here, name)));
for (const pair of args.put ? args.put.split(",") : []) {
  const [src, dest] = pair.split("=");
  mp.FS.writeFile(dest, fs.readFileSync(src));
}
if (args.site) mp.FS.writeFile("/site_config.py", fs.readFileSync(args.site));

let stopping = false;
async function stop(signal) {
  if (stopping) process.exit(1);
  stopping = true;
  try {
    await Promise.race([mp.runPythonAsync("import hostio\nawait hostio.stop()"), new Promise((r) => setTimeout(r, 3000))]);
  } catch (e) {
    process.stderr.write(`stop: ${e.message}\n`);
  }
  process.exit(signal === "SIGTERM" ? 0 : 130);
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));

const code = args.exec !== undefined ? args.exec : fs.readFileSync(args.main, "utf8");
try {
  await mp.runPythonAsync("import hostio\nhostio.install()");
  await mp.runPythonAsync(code);
  await mp.runPythonAsync("await hostio.wait()");
} catch (e) {
  process.stderr.write((e.name === "PythonError" ? e.message : e.stack) + "\n");
  process.exit(1);
}
if (args.exec !== undefined) process.exit(0);
