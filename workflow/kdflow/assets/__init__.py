"""Embedded real assets (models, corpus, sentiment task) turned into plain files."""
