//! paracloud-api
