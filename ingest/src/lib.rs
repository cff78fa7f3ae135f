//! The `auditledger` service: configuration, authentication and tenancy, quotas, the gRPC
//! services (`server`), their wiring (`serve`), metrics, the system log, and the commands.

pub mod admin;
pub mod auth;
pub mod commands;
pub mod config;
pub mod export;
pub mod hardening;
pub mod investigate;
pub mod logging;
pub mod metrics;
pub mod ocsf;
pub mod open;
pub mod quotas;
pub mod seqtrack;
pub mod serve;
pub mod server;
pub mod status;
pub mod syslog;
pub mod tiering;
pub mod tls;
