"""pandemonium.schedulers"""
