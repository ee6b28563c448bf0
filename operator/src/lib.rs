//! # DeviceGrid operator
//!
//! Reconciles `DeviceGrid` resources into StatefulSets of grid members. The CRD types,
//! reconciler and `devicegrid-operator` binary arrive with the operator issue.
