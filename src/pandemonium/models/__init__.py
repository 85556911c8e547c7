"""pandemonium.models"""
