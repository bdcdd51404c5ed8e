//! A loopback TCP proxy in front of the spy agent that a test switches
//! between network faults while the client runs, and a server that accepts
//! TCP and never says a word. They do what the spy agent cannot: fail the
//! connection under gRPC rather than the call on top of it.
//!
//! Both count the TCP connections they accept, so that a test can wait for
//! the client to have connected anew instead of sleeping. Both are bounded
//! (a fixed number of connections, two threads each) and stop every thread
//! of theirs when dropped.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::SockRef;

/// Connections open at once; more are closed as soon as they are accepted.
/// A client reconnecting with backoff holds one or two.
const MAX_CONNECTIONS: usize = 32;

/// How the proxy treats connections from the moment the mode is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways; stalled connections go on.
    Pass,
    /// Aborts every open connection with a reset (RST), and each new one as
    /// soon as it is accepted, as a peer that crashed or a firewall that
    /// dropped the connection.
    Reset,
    /// Stops forwarding on every connection, open or new, and stops reading
    /// from them, so that TCP backpressure holds the client's writes: a
    /// wedged peer that keeps its sockets open.
    Stall,
    /// The connections open now swallow what the client sends and answer
    /// nothing, and are never closed (until the proxy is dropped): a peer
    /// that vanished, or lost NAT state, without a FIN or a reset. Nothing
    /// tells the client. Connections made afterwards are forwarded, and
    /// later modes leave these ones as they are.
    HalfOpen,
    /// Closes every open connection, and each new one as soon as it is
    /// accepted, as a host where the agent stopped.
    Refuse,
}

/// A TCP proxy from a free port of 127.0.0.1 to `upstream`.
pub struct FaultProxy {
    addr: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every change of mode, connection count or connection.
    changed: Condvar,
}

struct State {
    mode: Mode,
    stopping: bool,
    accepted: u64,
    next_id: u64,
    /// Connections being forwarded or swallowed; one that has ended is gone.
    connections: HashMap<u64, Connection>,
}

struct Connection {
    client: TcpStream,
    upstream: TcpStream,
    black_hole: bool,
    /// Directions whose sender has closed its side, passed on to the other.
    finished: u8,
    pumps: Vec<JoinHandle<()>>,
}

/// What a pump does with a chunk it read.
enum Next {
    Forward,
    Swallow,
    Stop,
}

impl FaultProxy {
    /// Starts forwarding (in [`Mode::Pass`]) to `upstream`, a `host:port`.
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: Mode::Pass,
                stopping: false,
                accepted: 0,
                next_id: 0,
                connections: HashMap::new(),
            }),
            changed: Condvar::new(),
        });
        let acceptor = {
            let (shared, upstream) = (shared.clone(), upstream.to_string());
            std::thread::Builder::new()
                .name("fault-proxy".into())
                .spawn(move || accept(&listener, &shared, &upstream))
                .unwrap()
        };
        FaultProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT`, for the client to dial.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Switches modes. A reset or close of open connections is done when
    /// this returns: the client's side has the RST or FIN.
    pub fn set_mode(&self, mode: Mode) {
        let ended = {
            let mut state = self.shared.lock();
            state.mode = mode;
            let ended = match mode {
                Mode::Reset => state.end_live(abort),
                Mode::Refuse => state.end_live(close),
                Mode::HalfOpen => {
                    for connection in state.connections.values_mut() {
                        connection.black_hole = true;
                    }
                    Vec::new()
                }
                Mode::Pass | Mode::Stall => Vec::new(),
            };
            self.shared.changed.notify_all();
            ended
        };
        // A reset goes out when the last descriptor of the socket closes,
        // which is when its pumps have let go of theirs.
        for connection in ended {
            join(connection);
        }
    }

    /// TCP connections accepted so far, whatever was done with them.
    pub fn accepted(&self) -> u64 {
        self.shared.lock().accepted
    }

    /// Waits until at least `count` connections have been accepted, at most
    /// `timeout`; returns whether they had.
    pub fn wait_for_accepted(&self, count: u64, timeout: Duration) -> bool {
        self.shared
            .wait_until(timeout, |state| state.accepted >= count)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let ended = {
            let mut state = self.shared.lock();
            state.stopping = true;
            let ids: Vec<u64> = state.connections.keys().copied().collect();
            let ended: Vec<Connection> = ids
                .iter()
                .filter_map(|id| state.connections.remove(id))
                .collect();
            for connection in &ended {
                close(connection);
            }
            self.shared.changed.notify_all();
            ended
        };
        for connection in ended {
            join(connection);
        }
        stop_acceptor(&self.addr, self.acceptor.take());
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait_until(&self, timeout: Duration, ready: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !ready(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        true
    }

    /// Whether a pump of connection `id` forwards what it read, waiting
    /// while the proxy stalls.
    fn next(&self, id: u64) -> Next {
        let mut state = self.lock();
        loop {
            match state.connections.get(&id) {
                _ if state.stopping => return Next::Stop,
                None => return Next::Stop,
                Some(connection) if connection.black_hole => return Next::Swallow,
                Some(_) if state.mode == Mode::Stall => {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                Some(_) => return Next::Forward,
            }
        }
    }

    /// One direction of connection `id` met the end of its input (`clean`)
    /// or an error.
    fn finished(&self, id: u64, to: &TcpStream, clean: bool) {
        let mut state = self.lock();
        loop {
            if state.stopping {
                return;
            }
            match state.connections.get_mut(&id) {
                None => return,
                // Whatever the client does, a vanished peer never answers
                // it, not even by closing: the pump keeps its sockets open.
                Some(connection) if connection.black_hole => {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                Some(connection) if clean && connection.finished == 0 => {
                    // A half-close goes on to the other side, which may still answer.
                    connection.finished = 1;
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                Some(_) => {
                    if let Some(connection) = state.connections.remove(&id) {
                        close(&connection);
                    }
                    self.changed.notify_all();
                    return;
                }
            }
        }
    }
}

impl State {
    /// Removes the connections that are not black holes, ending each with `end`.
    fn end_live(&mut self, end: fn(&Connection)) -> Vec<Connection> {
        let live: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, connection)| !connection.black_hole)
            .map(|(&id, _)| id)
            .collect();
        live.iter()
            .filter_map(|id| self.connections.remove(id))
            .inspect(end)
            .collect()
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>, upstream: &str) {
    for client in listener.incoming() {
        let mut state = shared.lock();
        if state.stopping {
            return;
        }
        let Ok(client) = client else { continue };
        state.accepted += 1;
        shared.changed.notify_all();
        match state.mode {
            Mode::Reset => {
                let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
            }
            Mode::Refuse => {}
            Mode::Pass | Mode::Stall | Mode::HalfOpen => {
                if state.connections.len() < MAX_CONNECTIONS {
                    // Under the lock, so that no mode changes between the
                    // check and the registration; connecting on loopback
                    // takes no time.
                    forward(&mut state, shared, client, upstream);
                }
            }
        }
    }
}

/// Connects to `upstream` for `client` and starts a pump each way; an
/// upstream that is not there closes the client's connection.
fn forward(state: &mut State, shared: &Arc<Shared>, client: TcpStream, upstream: &str) {
    let Ok(upstream) = TcpStream::connect(upstream) else {
        return;
    };
    let id = state.next_id;
    state.next_id += 1;
    let pump_each_way = [
        (client.try_clone(), upstream.try_clone()),
        (upstream.try_clone(), client.try_clone()),
    ];
    let mut pumps = Vec::new();
    for (from, to) in pump_each_way {
        let (Ok(from), Ok(to)) = (from, to) else {
            continue;
        };
        let shared = shared.clone();
        pumps.push(
            std::thread::Builder::new()
                .name(format!("fault-proxy-{id}"))
                .spawn(move || pump(&shared, id, from, to))
                .unwrap(),
        );
    }
    state.connections.insert(
        id,
        Connection {
            client,
            upstream,
            black_hole: false,
            finished: 0,
            pumps,
        },
    );
}

fn pump(shared: &Shared, id: u64, mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = from.read(&mut buffer);
        // The end of the input waits for a stall like data, so that a
        // stalled connection passes on nothing at all.
        let next = shared.next(id);
        match (read, next) {
            (_, Next::Stop) => return,
            (Ok(0) | Err(_), Next::Swallow) => return shared.finished(id, &to, false),
            (Ok(0), Next::Forward) => return shared.finished(id, &to, true),
            (Err(_), Next::Forward) => return shared.finished(id, &to, false),
            (Ok(_), Next::Swallow) => {}
            (Ok(read), Next::Forward) => {
                if to.write_all(&buffer[..read]).is_err() {
                    return shared.finished(id, &to, false);
                }
            }
        }
    }
}

/// Ends a connection with a reset to the client: with a zero linger time,
/// closing the socket sends RST instead of FIN. Shutting down only its
/// reading side wakes the pump that reads it without sending anything.
fn abort(connection: &Connection) {
    let _ = SockRef::from(&connection.client).set_linger(Some(Duration::ZERO));
    let _ = connection.client.shutdown(Shutdown::Read);
    let _ = connection.upstream.shutdown(Shutdown::Both);
}

fn close(connection: &Connection) {
    let _ = connection.client.shutdown(Shutdown::Both);
    let _ = connection.upstream.shutdown(Shutdown::Both);
}

fn join(connection: Connection) {
    let Connection { pumps, .. } = connection;
    for pump in pumps {
        let _ = pump.join();
    }
}

/// Wakes an acceptor blocked in `accept` (its state says stopping) and joins it.
fn stop_acceptor(addr: &str, acceptor: Option<JoinHandle<()>>) {
    let _ = TcpStream::connect(addr);
    if let Some(acceptor) = acceptor {
        let _ = acceptor.join();
    }
}

/// Accepts TCP connections and never reads or writes a byte on them: a
/// peer whose TLS handshake never comes.
pub struct SilentServer {
    addr: String,
    shared: Arc<Silent>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Silent {
    state: Mutex<SilentState>,
    changed: Condvar,
}

#[derive(Default)]
struct SilentState {
    stopping: bool,
    accepted: u64,
    /// Held open, unread, until the server is dropped.
    held: Vec<TcpStream>,
}

impl SilentServer {
    /// Listens on a free port of 127.0.0.1.
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the silent server");
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Silent::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("silent-server".into())
                .spawn(move || {
                    for client in listener.incoming() {
                        let mut state = shared.lock();
                        if state.stopping {
                            return;
                        }
                        let Ok(client) = client else { continue };
                        state.accepted += 1;
                        if state.held.len() < MAX_CONNECTIONS {
                            state.held.push(client);
                        }
                        shared.changed.notify_all();
                    }
                })
                .unwrap()
        };
        SilentServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT`, for the client to dial.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Waits until at least `count` connections have been accepted, at most
    /// `timeout`; returns whether they had.
    pub fn wait_for_accepted(&self, count: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.accepted < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        true
    }
}

impl Silent {
    fn lock(&self) -> MutexGuard<'_, SilentState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        stop_acceptor(&self.addr, self.acceptor.take());
        self.shared.lock().held.clear();
    }
}
