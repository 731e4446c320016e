//! Graceful shutdown driven by signals.

use std::time::Duration;

use super::registry::HealthRegistry;

impl HealthRegistry {
    /// Waits for SIGINT (ctrl-c) or SIGTERM, then [`drain`](Self::drain)s
    /// and waits `grace` so load balancers see readiness fail before the
    /// server stops accepting. Hand it to axum's `with_graceful_shutdown`
    /// or tonic's `serve_with_shutdown`.
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router) -> std::io::Result<()> {
    /// use std::time::Duration;
    /// let health = battlement::HealthRegistry::new();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(health.clone().shutdown_on_signal(Duration::from_secs(5)))
    ///     .await
    /// # }
    /// ```
    pub async fn shutdown_on_signal(self, grace: Duration) {
        let signal = wait_for_signal().await;
        tracing::info!(signal, ?grace, "draining: readiness fails from now on");
        self.drain();
        tokio::time::sleep(grace).await;
        tracing::info!("shutting down");
    }
}

async fn wait_for_signal() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => "SIGINT",
        () = term => "SIGTERM",
    }
}
