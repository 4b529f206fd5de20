//! The connection to Redis and the instance number.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, FromRedisValue, RedisError, ScriptInvocation};
use tokio::sync::OnceCell;

/// A Redis client and its multiplexed connection, made on first use and
/// reconnecting by itself.
pub(crate) struct Connection {
    client: Client,
    connect_timeout: Duration,
    response_timeout: Duration,
    manager: OnceCell<ConnectionManager>,
}

impl Connection {
    /// A client for `url` (`redis://...`); nothing is connected yet.
    ///
    /// # Errors
    /// The URL is invalid.
    pub(crate) fn open(
        url: &str,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Connection, RedisError> {
        Ok(Connection {
            client: Client::open(url)?,
            connect_timeout,
            response_timeout,
            manager: OnceCell::new(),
        })
    }

    /// The multiplexed connection, made by the first call (the others wait
    /// for it; after a failure the next call tries again): the connect and
    /// response timeouts, 2 reconnect attempts at most 500 ms apart.
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub(crate) async fn manager(&self) -> Result<ConnectionManager, RedisError> {
        let conn = self
            .manager
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(conn.clone())
    }

    /// Runs a script on the multiplexed connection: `EVALSHA`, and when
    /// Redis answers `NOSCRIPT`, `SCRIPT LOAD` and `EVALSHA` again.
    ///
    /// # Errors
    /// Redis cannot be reached, the script failed, or its reply is not a `T`.
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let mut conn = self.manager().await?;
        call.invoke_async(&mut conn).await
    }

    /// A new synchronous connection, for start-up code that is not async:
    /// the connect timeout, and the response timeout on reads and writes.
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub(crate) fn blocking(&self) -> Result<redis::Connection, RedisError> {
        let conn = self
            .client
            .get_connection_with_timeout(self.connect_timeout)?;
        conn.set_read_timeout(Some(self.response_timeout))?;
        conn.set_write_timeout(Some(self.response_timeout))?;
        Ok(conn)
    }
}

/// `INCR Pinstances` for the key prefix `P`: a number that no other
/// ledger or limiter instance using the same Redis and prefix gets, which
/// names this instance's holds or leases.
pub(crate) fn incr_instance(prefix: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("INCR");
    cmd.arg(format!("{prefix}instances"));
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_counter_is_under_the_prefix() {
        assert_eq!(
            incr_instance("gateway:").get_packed_command(),
            b"*2\r\n$4\r\nINCR\r\n$17\r\ngateway:instances\r\n"
        );
    }

    #[test]
    fn a_bad_url_is_an_error_and_nothing_connects() {
        let ok = Connection::open("redis://127.0.0.1:1", Duration::ZERO, Duration::ZERO);
        assert!(ok.is_ok());
        assert!(Connection::open("http://nope", Duration::ZERO, Duration::ZERO).is_err());
    }
}
