//! paracloud-reconcile
