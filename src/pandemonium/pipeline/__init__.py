"""pandemonium.pipeline"""
