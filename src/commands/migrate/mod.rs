//! `certkeeper migrate ...`: adopt the certificates, accounts and settings of another ACME client, so
//! switching to certkeeper re-issues nothing and registers no new account.

pub mod adopt;
pub mod certbot;
