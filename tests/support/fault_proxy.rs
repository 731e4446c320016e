//! A TCP proxy on a free loopback port that puts network faults between a
//! client and its server: latency, a bandwidth limit, connections reset
//! mid-reply, a blackhole, a half-open peer. The fault in place applies to
//! the connections already open and to new ones; [`Fault::None`] ends it.
//! It counts the connections it holds, to find a client that leaks them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards as they come.
    None,
    /// Each chunk is delivered this long after it was read, both ways.
    Latency(Duration),
    /// At most this many bytes per second, each way and connection.
    Bandwidth(u64),
    /// The first reply chunk a connection carries is cut in half and the
    /// connection reset (RST) on both sides.
    ResetMidReply,
    /// Connections (open and new) are accepted and never answered: what
    /// they send is held, and delivered once the fault ends (a partition
    /// that heals).
    Blackhole,
    /// The peer forgot every open connection without closing it (a host
    /// that rebooted): what they send is dropped and never answered, even
    /// after the fault ends; new connections are refused.
    HalfOpen,
}

pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    live: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Forwards a new loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (fault, _) = watch::channel(Fault::None);
        let live = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let (faults, live, accepted) = (fault.clone(), live.clone(), accepted.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    if *faults.borrow() == Fault::HalfOpen {
                        refuse(client);
                        continue;
                    }
                    let (faults, live) = (faults.subscribe(), live.clone());
                    live.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        carry(client, target, faults).await;
                        live.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Self {
            addr,
            fault,
            live,
            accepted,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Puts `fault` in place (`Fault::None` ends the one in place).
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Connections open through the proxy now.
    pub fn live_connections(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Closes `stream` with a reset rather than a FIN.
fn refuse(stream: TcpStream) {
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Carries one connection until either side closes or a fault ends it.
async fn carry(client: TcpStream, target: SocketAddr, faults: watch::Receiver<Fault>) {
    let Ok(server) = TcpStream::connect(target).await else {
        refuse(client);
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    // Closed with a reset, not a FIN: a connection reset mid-reply.
    #[allow(deprecated)]
    let _ = client.set_linger(Some(Duration::ZERO));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, faults.clone(), false);
    let down = pump(server_read, client_write, faults, true);
    // Either direction ending ends the connection (both sockets close).
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// One direction: reads chunks, applies the fault in place to each, writes
/// them on; `reply`: the server-to-client direction.
async fn pump(
    mut from: OwnedReadHalf,
    to: OwnedWriteHalf,
    mut faults: watch::Receiver<Fault>,
    reply: bool,
) {
    // Chunks and when they are due, written in order by `deliver`.
    let (tx, rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut deliver = tokio::spawn(deliver(rx, to, faults.clone(), reply));
    let mut forgotten = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            // Reset, or the peer stopped reading.
            _ = &mut deliver => return,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let fault = *faults.borrow_and_update();
        forgotten |= fault == Fault::HalfOpen;
        if forgotten {
            continue; // read, never answered
        }
        let due = match fault {
            Fault::Latency(d) => Instant::now() + d,
            _ => Instant::now(),
        };
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    // The write side ends once its queue is drained (or at once on a
    // reset).
    let _ = deliver.await;
}

/// Writes the chunks of `rx` when due, under the fault in place.
async fn deliver(
    mut rx: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    mut to: OwnedWriteHalf,
    mut faults: watch::Receiver<Fault>,
    reply: bool,
) {
    let mut forgotten = false;
    while let Some((due, chunk)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        // Held while blackholed; dropped once the peer forgot it.
        while *faults.borrow_and_update() == Fault::Blackhole {
            if faults.changed().await.is_err() {
                return;
            }
        }
        let fault = *faults.borrow();
        forgotten |= fault == Fault::HalfOpen;
        if forgotten {
            continue;
        }
        if reply && fault == Fault::ResetMidReply {
            // The caller drops the client socket: a reset (linger 0).
            let _ = to.write_all(&chunk[..chunk.len() / 2]).await;
            return;
        }
        if to.write_all(&chunk).await.is_err() {
            return;
        }
        if let Fault::Bandwidth(rate) = fault {
            let secs = chunk.len() as f64 / rate.max(1) as f64;
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        }
    }
    let _ = to.shutdown().await;
}
