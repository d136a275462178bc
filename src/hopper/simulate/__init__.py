"""Simulated traffic: a school full of tablets, for the demo and load tests."""
