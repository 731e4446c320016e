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
