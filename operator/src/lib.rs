//! # DeviceGrid operator
//!
//! Reconciles `DeviceGrid` resources (`devicegrid.io/v1alpha1`) into StatefulSets of grid
//! members.
//!
//! - [`crd`]: the custom resource's spec and status, its OpenAPI schema and CEL rules, and
//!   the generated CRD YAML (`devicegrid-operator crd`, checked in under `crds/`)
//!
//! The reconciler, the object builders and the Helm chart are built out by the operator
//! issue.

pub mod crd;
