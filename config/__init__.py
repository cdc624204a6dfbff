"""pinfold.config"""
