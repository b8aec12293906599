//! A fresh database per test, dropped when the test ends.

use tokio_postgres::{Client, NoTls};

use crate::{admin_database_url, unique};

/// A database created for one test. Dropping it drops the database (`WITH (FORCE)`).
pub struct TestDb {
    pub name: String,
    /// Connection string for the test database itself.
    pub url: String,
}

impl TestDb {
    /// Creates an empty database.
    pub async fn create() -> Self {
        let name = unique("t");
        let admin = connect(&admin_database_url()).await;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
        let url = with_database(&admin_database_url(), &name);
        Self { name, url }
    }

    /// A name and URL for a database that does not exist yet (to test code that creates it);
    /// dropped like any other when the test ends.
    pub fn reserve() -> Self {
        let name = unique("t");
        let url = with_database(&admin_database_url(), &name);
        Self { name, url }
    }

    /// A new connection to the test database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// The database URL with its host and port replaced (to route through a proxy).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let mut url = reqwest::Url::parse(&self.url).expect("valid url");
        url.set_host(Some(&addr.ip().to_string())).expect("host");
        url.set_port(Some(addr.port())).expect("port");
        url.to_string()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; a short-lived thread with its own runtime does the I/O.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin_database_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            });
        })
        .join();
    }
}

/// Connects and drives the connection on the current runtime.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect to test Postgres");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn with_database(url: &str, database: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("TEST_DATABASE_URL is a URL");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}
