"""lakerec: batch recommender pipeline for the lakehouse (Spark + Delta + Petastorm + torch DDP)."""

__version__ = "0.1.0"
