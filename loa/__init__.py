"""loa: SMS and Zalo campaigns for Vietnam."""

__version__ = "0.1.0"
