//! What the `[sink] kind = "mongodb"` section becomes for this sink. The
//! TOML schema itself is `ferry_pipeline::config::MongoSinkConfig`.

use ferry_pipeline::config::MongoSinkConfig;
use ferry_pipeline::error::PipelineError;
use ferry_pipeline::event::TableId;
use mongodb::options::{ClientOptions, ConnectionString};

use crate::error::mongo_err;

/// The collection a source table is written to: its last name part
/// (`public.payments` → `payments`, `app.orders` → `orders`).
pub fn collection_of(table: &TableId) -> String {
    table.name.clone()
}

/// The hosts a URL names (never the credentials): what errors name.
pub fn hosts(url: &str) -> String {
    match ConnectionString::parse(url) {
        Ok(cs) => match &cs.host_info {
            mongodb::options::HostInfo::HostIdentifiers(hosts) => hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            mongodb::options::HostInfo::DnsRecord(name) => format!("{name} (DNS SRV)"),
            _ => "the configured hosts".to_string(),
        },
        Err(_) => "the configured hosts".to_string(),
    }
}

/// A client for the sink's URL; errors name the hosts, never the URL.
pub async fn connect(cfg: &MongoSinkConfig) -> Result<mongodb::Client, PipelineError> {
    let url = cfg.url.expose();
    let context = format!("connect to the MongoDB sink at {}", hosts(url));
    let options = ClientOptions::parse(url)
        .await
        .map_err(|e| mongo_err(&context, e))?;
    mongodb::Client::with_options(options).map_err(|e| mongo_err(&context, e))
}
