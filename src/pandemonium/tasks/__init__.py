"""pandemonium.tasks"""
