"""Experiments that reproduce and check the theory: ``fastdmf reproduce ...``."""
