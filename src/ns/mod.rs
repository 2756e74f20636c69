//! Processes and namespaces.
