//! A TCP proxy on a free loopback port whose connections the test can cut:
//! the server behind it keeps running while its clients lose it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct TcpProxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Forwards a new loopback port to `target` (`127.0.0.1:port`).
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let target = Arc::new(Mutex::new(target));
        let accept = tokio::spawn({
            let (open, connections, target) = (open.clone(), connections.clone(), target.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    // Checked under the lock `cut` takes: no connection
                    // slips past a cut.
                    let mut live = connections.lock().unwrap();
                    if !open.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection close
                    }
                    let target = *target.lock().unwrap();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    live.push(task);
                }
            }
        });
        Self {
            addr,
            target,
            open,
            connections,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection and refuses new ones until `restore`.
    pub fn cut(&self) {
        let mut live = self.connections.lock().unwrap();
        self.open.store(false, Ordering::SeqCst);
        for task in live.drain(..) {
            task.abort();
        }
    }

    /// Sends new connections to `target` from now on.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A TCP proxy that loses responses: on each of its first `lose`
/// connections the request goes through to the server, and the
/// connection is closed as soon as the server starts to answer (its
/// handler has run), so the client never sees that answer. Later
/// connections pass both ways.
pub struct LossyProxy {
    addr: SocketAddr,
    lost: Arc<std::sync::atomic::AtomicUsize>,
    accept: JoinHandle<()>,
}

impl LossyProxy {
    pub async fn start(target: SocketAddr, lose: usize) -> Self {
        use std::sync::atomic::AtomicUsize;
        use tokio::io::AsyncReadExt;

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let lost = Arc::new(AtomicUsize::new(0));
        let to_lose = Arc::new(AtomicUsize::new(lose));
        let accept = tokio::spawn({
            let lost = lost.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let lose_this = to_lose
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    let lost = lost.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(target).await else {
                            return;
                        };
                        if !lose_this {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                        let (mut from_client, client_out) = client.into_split();
                        let (mut from_server, mut to_server) = server.into_split();
                        let up = tokio::spawn(async move {
                            let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                        });
                        let mut first = [0u8; 1];
                        let _ = from_server.read(&mut first).await;
                        lost.fetch_add(1, Ordering::SeqCst);
                        up.abort();
                        drop(client_out);
                    });
                }
            }
        });
        Self { addr, lost, accept }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many responses it lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
