"""Experiment drivers shared by chapters: loops over settings that return tidy rows."""
