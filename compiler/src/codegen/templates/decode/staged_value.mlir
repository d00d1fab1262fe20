              %xo{{row}}_{{u}}c = arith.constant {{offset}} : index
              %xo{{row}}_{{u}} = arith.addi %qp, %xo{{row}}_{{u}}c : index
              %x{{row}}_{{u}} = memref.load %xs[%xo{{row}}_{{u}}] : {{xs}}
