//! The job aggregate (written next).
