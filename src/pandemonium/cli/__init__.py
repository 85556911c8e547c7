"""pandemonium.cli"""
