//! A TCP proxy a test owns, to take a service away from the code under test (and only from
//! it): `cut` really closes its connections and refuses new ones; `stall` keeps them open
//! but stops forwarding bytes, as a network partition does. `restore` undoes either.
//! `swallow_answers_after` loses a connection's answers from the moment the client sends a
//! given request: the server receives it (a commit, say) and acts on it, the client never
//! learns how it went, as when a partition starts between the two. `delay` holds every chunk
//! of bytes, both ways, that long before passing it on (latency on a slow link).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Stall,
    Cut,
}

/// Forwards `127.0.0.1:<port>` to `target`.
pub struct TcpProxy {
    addr: SocketAddr,
    mode: watch::Sender<(Mode, u64)>,
    trap: Arc<Trap>,
    task: tokio::task::JoinHandle<()>,
}

/// Armed with a pattern: the first connection whose client sends it loses every answer after.
/// Also holds the latency every chunk gets.
#[derive(Default)]
struct Trap {
    pattern: Mutex<Option<Vec<u8>>>,
    sprung: AtomicBool,
    delay_micros: AtomicU64,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel((Mode::Forward, 0));
        let trap = Arc::new(Trap::default());
        let task = tokio::spawn(accept_loop(listener, target, mode.clone(), trap.clone()));
        Self { addr, mode, trap, task }
    }

    /// The next client bytes containing `pattern` (one read's worth) are forwarded, and from
    /// then on everything the server sends back on that connection is lost; the connection
    /// stays open until the client closes it or the proxy is cut. Once.
    pub fn swallow_answers_after(&self, pattern: &[u8]) {
        self.trap.sprung.store(false, Ordering::SeqCst);
        *self.trap.pattern.lock().unwrap() = Some(pattern.to_vec());
    }

    /// Holds every chunk of bytes, each way, `delay` before forwarding it (in order), on
    /// every connection; `Duration::ZERO` forwards at once again.
    pub fn delay(&self, delay: Duration) {
        self.trap.delay_micros.store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// Whether the armed pattern went through (and the answers on its connection are lost).
    pub fn answers_swallowed(&self) -> bool {
        self.trap.sprung.load(Ordering::SeqCst)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection and refuses new ones (accepted, then closed at once).
    pub fn cut(&self) {
        self.mode.send_modify(|(mode, generation)| {
            *mode = Mode::Cut;
            *generation += 1;
        });
    }

    /// Keeps connections open but forwards nothing, in either direction, until restored.
    pub fn stall(&self) {
        self.mode.send_modify(|(mode, _)| *mode = Mode::Stall);
    }

    /// Forwards again (new connections after a cut, held bytes after a stall).
    pub fn restore(&self) {
        self.mode.send_modify(|(mode, _)| *mode = Mode::Forward);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, mode: watch::Sender<(Mode, u64)>, trap: Arc<Trap>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        let (current, generation) = *mode.borrow();
        if current == Mode::Cut {
            drop(inbound);
            continue;
        }
        let mode = mode.subscribe();
        let trap = trap.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            // Set when this connection springs the trap: the server's answers are dropped.
            let swallowing = Arc::new(AtomicBool::new(false));
            let requests = Side::Requests { trap: trap.clone(), swallowing: swallowing.clone() };
            let answers = Side::Answers { trap, swallowing };
            tokio::select! {
                _ = pump(in_read, out_write, mode.clone(), generation, requests) => {}
                _ = pump(out_read, in_write, mode, generation, answers) => {}
            }
            // Dropping both sockets closes them: the client sees the connection die.
        });
    }
}

/// Which way a pump copies, with what it needs for the trap.
enum Side {
    Requests { trap: Arc<Trap>, swallowing: Arc<AtomicBool> },
    Answers { trap: Arc<Trap>, swallowing: Arc<AtomicBool> },
}

impl Side {
    fn trap(&self) -> &Trap {
        match self {
            Side::Requests { trap, .. } | Side::Answers { trap, .. } => trap,
        }
    }
}

/// Copies `from` to `to` while forwarding, each chunk once its delay is over; holds bytes
/// while stalled; ends on a cut (what was still delayed is lost) or when either side closes
/// (what was delayed is delivered first).
async fn pump(
    from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<(Mode, u64)>,
    generation: u64,
    side: Side,
) {
    let (due, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writing = async move {
        while let Some((at, bytes)) = queued.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::pin!(writing);
    let check = mode.clone();
    tokio::select! {
        _ = &mut writing => return,
        _ = read_side(from, due, mode, generation, side) => {}
    }
    if check.borrow().1 == generation {
        writing.await;
    }
}

/// Reads `from` and queues each chunk with the moment it is due; see [`pump`].
async fn read_side(
    mut from: tokio::net::tcp::OwnedReadHalf,
    due: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    mut mode: watch::Receiver<(Mode, u64)>,
    generation: u64,
    side: Side,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() || mode.borrow().1 != generation {
                    return;
                }
                continue;
            }
        };
        // Hold the bytes while stalled; give up on a cut.
        loop {
            let (current, g) = *mode.borrow();
            if g != generation {
                return;
            }
            if current == Mode::Forward {
                break;
            }
            if mode.changed().await.is_err() {
                return;
            }
        }
        match &side {
            Side::Requests { trap, swallowing } => {
                let mut pattern = trap.pattern.lock().unwrap();
                if pattern.as_ref().is_some_and(|p| buf[..n].windows(p.len()).any(|w| w == p.as_slice())) {
                    *pattern = None;
                    swallowing.store(true, Ordering::SeqCst);
                    trap.sprung.store(true, Ordering::SeqCst);
                }
            }
            Side::Answers { swallowing, .. } if swallowing.load(Ordering::SeqCst) => continue,
            Side::Answers { .. } => {}
        }
        let delay = Duration::from_micros(side.trap().delay_micros.load(Ordering::SeqCst));
        if due.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}
