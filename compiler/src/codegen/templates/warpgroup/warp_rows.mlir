            %w16 = arith.muli %w4, %c16 : index
            %rw0 = arith.addi %wgr, %w16 : index
