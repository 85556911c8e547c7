"""pandemonium.tracking"""
