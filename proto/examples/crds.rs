//! Prints the CustomResourceDefinitions of kvmlet's `kubevirt.io/v1` kinds as
//! one multi-document YAML stream, the content of `deploy/crds.yaml`:
//!
//! ```sh
//! cargo run -q -p kvmlet-proto --example crds > deploy/crds.yaml
//! ```
//!
//! `proto/tests/crds_drift.rs` fails when the checked-in file and the types disagree.

use std::io::Write;

fn main() {
    let mut out = String::from(
        "# Generated from the kvmlet-proto types by\n\
         #   cargo run -q -p kvmlet-proto --example crds > deploy/crds.yaml\n\
         # Do not edit: proto/tests/crds_drift.rs fails when this file and the types differ.\n",
    );
    for crd in proto::crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("a CRD serializes to YAML"));
    }
    std::io::stdout().lock().write_all(out.as_bytes()).expect("write to stdout");
}
