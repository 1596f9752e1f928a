"""mace-lr: long-range electrostatics, finite electric fields and an i-PI driver for MACE."""

__version__ = "0.1.0"
