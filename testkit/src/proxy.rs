//! A TCP proxy a test owns, to take a service away from the code under test (and only from
//! it): `cut` really closes its connections and refuses new ones; `stall` keeps them open
//! but stops forwarding bytes, as a network partition does. `restore` undoes either.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel((Mode::Forward, 0));
        let task = tokio::spawn(accept_loop(listener, target, mode.clone()));
        Self { addr, mode, task }
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

async fn accept_loop(listener: TcpListener, target: SocketAddr, mode: watch::Sender<(Mode, u64)>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        let (current, generation) = *mode.borrow();
        if current == Mode::Cut {
            drop(inbound);
            continue;
        }
        let mode = mode.subscribe();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::select! {
                _ = pump(in_read, out_write, mode.clone(), generation) => {}
                _ = pump(out_read, in_write, mode, generation) => {}
            }
            // Dropping both sockets closes them: the client sees the connection die.
        });
    }
}

/// Copies `from` to `to` while forwarding; holds bytes while stalled; ends on a cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<(Mode, u64)>,
    generation: u64,
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
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
