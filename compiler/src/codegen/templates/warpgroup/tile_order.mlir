          %sb = arith.subi %s, %bid : index
          %it = arith.divui %sb, %G : index
{{tile}}
