//! The cloud-init NoCloud seed disk (an ISO 9660 image labelled `cidata`).
