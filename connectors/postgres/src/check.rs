//! Prerequisite checks for `ferry check`: what the source must provide.
