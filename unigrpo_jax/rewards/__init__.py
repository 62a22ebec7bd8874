"""Rewards: functions scoring generated images, built by name from options."""
