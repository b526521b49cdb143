"""Clients that let other RL frameworks use an r1rm judge served by `r1rm judge --serve` as their reward."""
