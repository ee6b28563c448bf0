//! # DeviceGrid end-to-end suite
//!
//! Talks to whatever cluster `KUBECONFIG` names; filled in by the end-to-end issue.
