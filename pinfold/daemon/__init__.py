"""pinfold.daemon"""
