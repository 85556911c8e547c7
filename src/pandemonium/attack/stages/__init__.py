"""attack/stages"""
