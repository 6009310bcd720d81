"""Tests of `bookstream status`: problem rules, snapshots of real servers, the command itself."""
