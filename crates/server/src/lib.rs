//! `hids-server`: turns the agents' event stream into alerts. It reads the event topics
//! as a Kafka consumer group (any number of instances side by side), checks every event
//! against Sigma rules and our own pack, folds matches into one alert per rule, host and
//! window, stores them (SQLite, or a PostgreSQL shared by the instances), and serves them
//! over HTTP; new alerts also go to a Kafka topic and to webhooks.

pub mod config;
pub mod console;
pub mod consume;
pub mod fleet;
pub mod fleet_metrics;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod outputs;
pub mod recent;
pub mod tls;
pub mod triage;
