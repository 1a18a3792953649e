//! Accounts against the real server.
